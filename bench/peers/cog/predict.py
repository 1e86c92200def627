"""iris_nearest as a Cog model: bench/peers.py's ``cog`` peer, served by coglet without Docker.

    cd bench/peers/cog && PYTHONPATH=.. COG_PREDICT_TYPE_STUB=predict.py:Runner COG_MAX_CONCURRENCY=8 \\
        PORT=5000 python -m cog.server.http --host 127.0.0.1    # in the peer's own venv

That is what a ``cog build`` image runs. ``.cog/openapi_schema.json`` beside this file stands in for the schema
``cog build`` generates (coglet validates the input against it; without it coglet accepts any input). ``run`` is
async so that coglet takes more than one request at a time (COG_MAX_CONCURRENCY, cog.yaml's
``concurrency.max``); with one slot, coglet answers 409 "At capacity" even to a keep-alive client sending its
next request right after an answer. ``POST /predictions`` with ``{"input": {...parameters...}}``; the answer is
``{"output": {...}, "status": "succeeded", ...}``.
"""

from __future__ import annotations

from typing import Any

from cog import BaseRunner, Input
from iris_model import METRICS, predict


class Runner(BaseRunner):
    def setup(self) -> None:
        """The notebook's setup cells ran at import (iris_model)."""

    async def run(
        self,
        features: list[float] = Input(description="one flower's measurements (cm)"),  # noqa: B008
        metric: str = Input(default="euclidean", choices=list(METRICS)),
        top_k: int = Input(default=3),
        note: str | None = Input(default=None),
    ) -> dict[str, Any]:
        return predict(features, metric, top_k, note)
