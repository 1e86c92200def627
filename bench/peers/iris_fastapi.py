"""iris_nearest hand-written as a FastAPI endpoint with a pydantic model: bench/peers.py's ``fastapi`` peer.

    python iris_fastapi.py --port 8000    # from bench/peers/, in the peer's own venv

Served by uvicorn (httptools and uvloop, as nb2svc is) with the settings ``nb2svc serve`` uses (log level
warning, no access log).
The endpoint is async, like bench/handwritten_fastapi.py's (a sync one would run in a thread pool).
"""

from __future__ import annotations

import argparse
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, HTTPException
from iris_model import InvalidInput, predict
from pydantic import BaseModel, ConfigDict

app = FastAPI()


class Params(BaseModel):
    """The notebook's parameters cell: the same names, types and defaults; unknown fields are a 422."""

    model_config = ConfigDict(extra="forbid")

    features: list[float]
    metric: Literal["euclidean", "manhattan", "cosine"] = "euclidean"
    top_k: int = 3
    note: str | None = None


@app.post("/invoke")
async def invoke(params: Params) -> dict[str, Any]:
    """The prediction and outputs cells; the notebook's InvalidInput is the caller's fault: a 422."""
    try:
        return predict(**params.model_dump())
    except InvalidInput as e:
        raise HTTPException(422, detail=[{"loc": ["body", e.field], "msg": str(e)}]) from None


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
