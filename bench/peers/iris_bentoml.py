"""iris_nearest as a BentoML service: bench/peers.py's ``bentoml`` peer.

    bentoml serve iris_bentoml:Iris --host 127.0.0.1 --port 3000    # from bench/peers/, in the peer's own venv

``POST /invoke`` takes the parameters as a JSON object, checked by a pydantic model (``input_spec``).
"""

from __future__ import annotations

from typing import Any, Literal

import bentoml
from bentoml.exceptions import InvalidArgument
from iris_model import InvalidInput, predict
from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """The notebook's parameters cell: the same names, types and defaults; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    features: list[float]
    metric: Literal["euclidean", "manhattan", "cosine"] = "euclidean"
    top_k: int = 3
    note: str | None = None


@bentoml.service(workers=1)
class Iris:
    """The notebook's setup cells ran at import (iris_model); one API, the per-request cells (async: BentoML
    runs a sync API in a thread pool, a hop the arithmetic here does not need)."""

    @bentoml.api(input_spec=Params)
    async def invoke(
        self,
        features: list[float],
        metric: Literal["euclidean", "manhattan", "cosine"] = "euclidean",
        top_k: int = 3,
        note: str | None = None,
    ) -> dict[str, Any]:
        try:
            return predict(features, metric, top_k, note)
        except InvalidInput as e:
            raise InvalidArgument(str(e)) from None
