"""sample_notebooks/iris_nearest.ipynb's cells, copied as they are (standard library only): what every peer serves.

The setup cells run once at import; ``predict`` is the per-request cells (the prediction cell's checks and
arithmetic, then the outputs cell), with the parameters cell's names, types and defaults as its arguments.
"""

from __future__ import annotations

import math
from typing import Any

# -- setup cells -------------------------------------------------------------------------------------------------

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


class InvalidInput(ValueError):
    """Wrong input from the caller (each peer turns it into its framework's client error where it has one)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


CENTROIDS = {
    s: [sum(col) / len(col) for col in zip(*[row[:4] for row in FLOWERS if row[-1] == s], strict=False)]
    for s in SPECIES
}
SPREAD = {
    m: sum(measure(list(row[:4]), CENTROIDS[row[-1]], m) for row in FLOWERS) / len(FLOWERS)
    for m in ("euclidean", "manhattan", "cosine")
}

# -- the parameters cell's names (``features`` required) -----------------------------------------------------------

METRICS = ("euclidean", "manhattan", "cosine")
PARAMETERS = ("features", "metric", "top_k", "note")


def predict(
    features: list[float], metric: str = "euclidean", top_k: int = 3, note: str | None = None
) -> dict[str, Any]:
    """The prediction cell and the outputs cell, as they are; the outputs cell's names are the answer."""
    if len(features) != len(FEATURES):
        raise InvalidInput(
            f"features must hold {len(FEATURES)} measurements ({', '.join(FEATURES)}), got {len(features)}",
            "features",
        )
    if any(v <= 0 for v in features):
        raise InvalidInput(f"measurements are lengths in cm and must be positive, got {features}", "features")
    if not 1 <= top_k <= len(SPECIES):
        raise InvalidInput(f"top_k must be between 1 and {len(SPECIES)}, got {top_k}", "top_k")

    distances = {s: measure(features, c, metric) for s, c in CENTROIDS.items()}
    weights = {s: math.exp(-d / SPREAD[metric]) for s, d in distances.items()}
    total = sum(weights.values())
    ranked = sorted(SPECIES, key=lambda s: distances[s])
    best = ranked[0]

    label = best
    distance = round(distances[best], 4)
    scores = {s: round(weights[s] / total, 4) for s in ranked[:top_k]}
    return {"label": label, "distance": distance, "scores": scores, "note": note}
