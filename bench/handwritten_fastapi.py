"""The trivial serving notebook's work written by hand as a FastAPI endpoint: the baseline of bench/run.py.

    python bench/handwritten_fastapi.py --port 8000

Served by uvicorn with the settings ``nb2svc serve`` uses (log level warning, no access log, lifespan on).
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

app = FastAPI()


class Params(BaseModel):
    """The notebook's parameters: the same names, types and defaults; unknown fields are a 422."""

    model_config = ConfigDict(extra="forbid")

    x: float = 1.0
    y: float = 2.0


@app.post("/invoke")
async def invoke(params: Params) -> dict[str, float]:
    """The outputs cell: ``total: float = x + y``."""
    return {"total": params.x + params.y}


@app.get("/health")
async def health() -> dict[str, str]:
    """Ready as soon as uvicorn answers."""
    return {"status": "ok"}


def main() -> None:
    """Serve on 127.0.0.1 with the same uvicorn settings as ``nb2svc serve``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
