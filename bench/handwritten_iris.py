"""sample_notebooks/iris_nearest.ipynb's work written by hand: the baseline of bench/images.py's openfaas backend.

    python bench/handwritten_iris.py --host 0.0.0.0 --port 8080

A plain Starlette app on uvicorn (both are in nb2svc's base image; FastAPI and pydantic are not), served with the
settings nb2svc's openfaas backend uses (log level warning, no access log, lifespan on). The request body is
checked by hand the way the notebook's parameters cell types it (``features`` required, a list of numbers;
``metric``, ``top_k``, ``note`` optional; unknown fields refused: a 422), then the notebook's own checks and
arithmetic run, copied from its cells.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# -- the notebook's setup cells, as they are -------------------------------------------------------------------

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
FLOWERS = [
    # sepal_length, sepal_width, petal_length, petal_width, species
    (5.1, 3.5, 1.4, 0.2, "setosa"),
    (4.9, 3.0, 1.4, 0.2, "setosa"),
    (4.7, 3.2, 1.3, 0.2, "setosa"),
    (4.6, 3.1, 1.5, 0.2, "setosa"),
    (5.0, 3.6, 1.4, 0.2, "setosa"),
    (7.0, 3.2, 4.7, 1.4, "versicolor"),
    (6.4, 3.2, 4.5, 1.5, "versicolor"),
    (6.9, 3.1, 4.9, 1.5, "versicolor"),
    (5.5, 2.3, 4.0, 1.3, "versicolor"),
    (6.5, 2.8, 4.6, 1.5, "versicolor"),
    (6.3, 3.3, 6.0, 2.5, "virginica"),
    (5.8, 2.7, 5.1, 1.9, "virginica"),
    (7.1, 3.0, 5.9, 2.1, "virginica"),
    (6.3, 2.9, 5.6, 1.8, "virginica"),
    (6.5, 3.0, 5.8, 2.2, "virginica"),
]
SPECIES = sorted({row[-1] for row in FLOWERS})


def measure(a: list[float], b: list[float], metric: str) -> float:
    if metric == "euclidean":
        return math.dist(a, b)
    if metric == "manhattan":
        return sum(abs(x - y) for x, y in zip(a, b, strict=False))
    if metric == "cosine":
        dot = sum(x * y for x, y in zip(a, b, strict=False))
        return 1.0 - dot / (math.hypot(*a) * math.hypot(*b))
    raise ValueError(f"unknown metric {metric!r}")


CENTROIDS = {
    s: [sum(col) / len(col) for col in zip(*[row[:4] for row in FLOWERS if row[-1] == s], strict=False)]
    for s in SPECIES
}
SPREAD = {
    m: sum(measure(list(row[:4]), CENTROIDS[row[-1]], m) for row in FLOWERS) / len(FLOWERS)
    for m in ("euclidean", "manhattan", "cosine")
}

# -- the parameters cell, checked by hand ----------------------------------------------------------------------

METRICS = ("euclidean", "manhattan", "cosine")
KNOWN = {"features", "metric", "top_k", "note"}


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _problems(body: Any) -> list[dict[str, str]]:
    """What is wrong with the body, field by field (empty: nothing)."""
    if not isinstance(body, dict):
        return [{"field": "", "message": "the body must be a JSON object"}]
    bad = [{"field": k, "message": "unknown field"} for k in body if k not in KNOWN]
    features = body.get("features")
    if "features" not in body:
        bad.append({"field": "features", "message": "required"})
    elif not isinstance(features, list) or not all(_number(v) for v in features):
        bad.append({"field": "features", "message": "must be a list of numbers"})
    if "metric" in body and body["metric"] not in METRICS:
        bad.append({"field": "metric", "message": f"must be one of {', '.join(METRICS)}"})
    if "top_k" in body and not (isinstance(body["top_k"], int) and not isinstance(body["top_k"], bool)):
        bad.append({"field": "top_k", "message": "must be an integer"})
    if "note" in body and body["note"] is not None and not isinstance(body["note"], str):
        bad.append({"field": "note", "message": "must be a string or null"})
    return bad


def predict(
    features: list[float], metric: str = "euclidean", top_k: int = 3, note: str | None = None
) -> dict[str, Any]:
    """The prediction and outputs cells, as they are."""
    if len(features) != len(FEATURES):
        raise ValueError(
            f"features must hold {len(FEATURES)} measurements ({', '.join(FEATURES)}), got {len(features)}"
        )
    if any(v <= 0 for v in features):
        raise ValueError(f"measurements are lengths in cm and must be positive, got {features}")
    if not 1 <= top_k <= len(SPECIES):
        raise ValueError(f"top_k must be between 1 and {len(SPECIES)}, got {top_k}")

    distances = {s: measure(features, c, metric) for s, c in CENTROIDS.items()}
    weights = {s: math.exp(-d / SPREAD[metric]) for s, d in distances.items()}
    total = sum(weights.values())
    ranked = sorted(SPECIES, key=lambda s: distances[s])
    best = ranked[0]

    label = best
    distance = round(distances[best], 4)
    scores = {s: round(weights[s] / total, 4) for s in ranked[:top_k]}
    return {"label": label, "distance": distance, "scores": scores, "note": note}


# -- HTTP --------------------------------------------------------------------------------------------------------


async def invoke(request: Request) -> Response:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return JSONResponse({"error": "bad_request", "message": "the body is not JSON"}, status_code=400)
    bad = _problems(body)
    if bad:
        return JSONResponse({"error": "validation_error", "detail": bad}, status_code=422)
    try:
        return JSONResponse(predict(**body))
    except ValueError as e:
        return JSONResponse({"error": "notebook_error", "message": str(e)}, status_code=500)


async def health(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/invoke", invoke, methods=["POST"]), Route("/health", health, methods=["GET"])])


def main() -> None:
    """Serve with the uvicorn settings of nb2svc's openfaas backend."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
