"""iris_nearest as a LitServe API: bench/peers.py's ``litserve`` peer.

    python iris_litserve.py --port 8000    # from bench/peers/, in the peer's own venv

``POST /predict`` with the parameters as a JSON object, checked by a pydantic model (LitServe hands
``decode_request``'s annotation to FastAPI). LitServe's defaults otherwise: one inference worker process.

No ``from __future__ import annotations`` here: LitServe reads the annotation as a class, not a string.
"""

import argparse
from typing import Any, Literal

import litserve as ls
from fastapi import HTTPException
from iris_model import InvalidInput, predict
from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """The notebook's parameters cell: the same names, types and defaults; unknown fields are a 422."""

    model_config = ConfigDict(extra="forbid")

    features: list[float]
    metric: Literal["euclidean", "manhattan", "cosine"] = "euclidean"
    top_k: int = 3
    note: str | None = None


class IrisAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        """The notebook's setup cells ran at import (iris_model)."""

    def decode_request(self, request: Params) -> dict[str, Any]:
        return request.model_dump()

    def predict(self, x: dict[str, Any]) -> dict[str, Any]:
        try:
            return predict(**x)
        except InvalidInput as e:
            raise HTTPException(422, detail=[{"loc": ["body", e.field], "msg": str(e)}]) from None

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = ls.LitServer(IrisAPI(), accelerator="cpu")
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
