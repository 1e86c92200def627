"""Writes the sample notebooks of this folder. Run it after editing a cell here:

    python sample_notebooks/_make.py

The samples use the standard library only, so they run on a fresh machine in seconds,
in Jupyter (top to bottom, with their defaults) as well as behind `nb2svc serve`.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

# A cell is "source" (code), ("md", "text") or ("tag1,tag2", "source").
Cells = list[tuple[str, str] | str]


def write(name: str, cells: Cells, **nb2svc: object) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    if nb2svc:
        nb.metadata["nb2svc"] = nb2svc
    for c in cells:
        if isinstance(c, tuple):
            tags, src = c
            if tags == "md":
                nb.cells.append(new_markdown_cell(src))
            else:
                nb.cells.append(new_code_cell(src, metadata={"tags": tags.split(",")}))
        else:
            nb.cells.append(new_code_cell(c))
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating an unchanged notebook changes nothing
        cell["id"] = f"{name.replace('_', '-')}-{i + 1:02d}"
    path = HERE / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


# --------------------------------------------------------------------------- iris_nearest (serving)

IRIS: Cells = [
    (
        "md",
        """\
# Iris species from four measurements

A small **nearest-centroid** classifier: the setup cells below hold fifteen labelled flowers
(five of each species, from Fisher's iris data) and compute each species' average measurements.
A flower is given the species whose average it is closest to.

As a service (`nb2svc serve sample_notebooks/iris_nearest.ipynb`), the cells above the
`parameters` cell run once when the service starts; each `POST /invoke` replaces the
parameters and runs the cells below; the `outputs` cell is the response:

```
nb2svc call http://127.0.0.1:8080 -p features=6.3,2.9,5.6,1.8 -p metric=manhattan
```""",
    ),
    """\
import math
from typing import Literal, Optional  # used by the parameters cell's annotations""",
    (
        "md",
        """\
## The training data

Measurements in centimetres: sepal length, sepal width, petal length, petal width.""",
    ),
    """\
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
len(FLOWERS), SPECIES""",
    (
        "md",
        """\
## The model

One centroid per species (its mean measurements), and three ways to measure how far a flower
is from a centroid. `SPREAD` is each metric's typical distance from a training flower to its
own centroid; dividing by it puts the three metrics on one scale when distances become scores.""",
    ),
    """\
def measure(a: list[float], b: list[float], metric: str) -> float:
    if metric == "euclidean":
        return math.dist(a, b)
    if metric == "manhattan":
        return sum(abs(x - y) for x, y in zip(a, b))
    if metric == "cosine":
        dot = sum(x * y for x, y in zip(a, b))
        return 1.0 - dot / (math.hypot(*a) * math.hypot(*b))
    raise ValueError(f"unknown metric {metric!r}")


CENTROIDS = {
    s: [sum(col) / len(col) for col in zip(*[row[:4] for row in FLOWERS if row[-1] == s])]
    for s in SPECIES
}
SPREAD = {
    m: sum(measure(list(row[:4]), CENTROIDS[row[-1]], m) for row in FLOWERS) / len(FLOWERS)
    for m in ("euclidean", "manhattan", "cosine")
}
{s: [round(v, 2) for v in c] for s, c in CENTROIDS.items()}""",
    (
        "md",
        """\
## Parameters

One flower's measurements, and how to compare them. `features` is marked `# required`: a
caller must send it, and the value here is the example the API documents.""",
    ),
    (
        "parameters",
        """\
features: list[float] = [5.1, 3.5, 1.4, 0.2]  # required: one flower's measurements (cm)
metric: Literal["euclidean", "manhattan", "cosine"] = "euclidean"  # how distance is measured
top_k: int = 3  # how many species to list in scores, best first
note: Optional[str] = None  # free text, returned with the answer (e.g. a sample id)""",
    ),
    (
        "md",
        """\
## Prediction

Check the input first, so that a bad request gets a clear message instead of a traceback
from deep inside the arithmetic.""",
    ),
    """\
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
best = ranked[0]""",
    (
        "md",
        """\
## Outputs

The response: each line's annotation is its type in the API. (The bare expression at the end
only shows the answer in Jupyter; the service ignores it.)""",
    ),
    (
        "outputs",
        """\
label: str = best  # the predicted species
distance: float = round(distances[best], 4)  # distance to that species' centroid
scores: dict[str, float] = {s: round(weights[s] / total, 4) for s in ranked[:top_k]}  # probability per species
note: Optional[str] = note  # the note sent with the request
label, distance, scores""",
    ),
]


# --------------------------------------------------------------------------- fit_line (training)

FIT: Cells = [
    (
        "md",
        """\
# Fit a line by gradient descent

A **training** notebook (`metadata.nb2svc.kind` is `"training"`): it generates noisy points
around the line `y = 2x - 1` from a seeded random generator, fits a slope and an intercept by
mini-batch gradient descent in plain Python, and writes the model to `model.json` (and the loss
curve to `loss.csv`) in the artifacts folder.

As a service, each `POST /runs` runs the whole notebook with the call's parameters and keeps the
executed notebook, the outputs and the files written under `$NB2SVC_ARTIFACTS`:

```
nb2svc serve sample_notebooks/fit_line.ipynb
nb2svc call http://127.0.0.1:8080 -p optimizer=sgd -p noise=1.0
```

Run in Jupyter or with plain papermill, it writes to `./artifacts/` instead.""",
    ),
    """\
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Literal  # used by the parameters cell's annotations""",
    ("md", "## Parameters"),
    (
        "parameters",
        """\
n_points: int = 200  # how many noisy points to generate
noise: float = 0.5  # standard deviation of the noise added to y
seed: int = 42  # random seed: the same seed gives the same data and the same fit
epochs: int = 100  # passes over the data
lr: float = 0.05  # learning rate
optimizer: Literal["sgd", "momentum"] = "momentum"  # mini-batch SGD, or SGD on a running average of gradients""",
    ),
    (
        "md",
        """\
## Data

The artifacts folder is read *below* the parameters cell: nb2svc sets `NB2SVC_ARTIFACTS` for each
run in the cell it injects after the parameters cell.""",
    ),
    """\
if n_points < 2:
    raise ValueError(f"n_points must be at least 2 to fit a line, got {n_points}")
if noise < 0:
    raise ValueError(f"noise is a standard deviation and must not be negative, got {noise}")
if epochs < 1 or lr <= 0:
    raise ValueError(f"epochs must be at least 1 and lr positive, got epochs={epochs}, lr={lr}")

TRUE_SLOPE, TRUE_INTERCEPT = 2.0, -1.0
BATCH_SIZE = 16
MOMENTUM = 0.9 if optimizer == "momentum" else 0.0

artifacts = Path(os.environ.get("NB2SVC_ARTIFACTS", "artifacts"))
artifacts.mkdir(parents=True, exist_ok=True)

rng = random.Random(seed)
xs = [rng.uniform(-3.0, 3.0) for _ in range(n_points)]
ys = [TRUE_SLOPE * x + TRUE_INTERCEPT + rng.gauss(0.0, noise) for x in xs]
list(zip(xs[:3], ys[:3]))""",
    (
        "md",
        """\
## Training

The loss is the mean squared error; its gradient for a batch is
`(2/n) Σ (w·x + b - y)·x` for the slope `w` and `(2/n) Σ (w·x + b - y)` for the intercept `b`.""",
    ),
    """\
def mse_of(w: float, b: float) -> float:
    try:
        return sum((w * x + b - y) ** 2 for x, y in zip(xs, ys)) / len(xs)
    except OverflowError:  # the fit has diverged
        return math.inf


w = b = 0.0  # slope and intercept
vw = vb = 0.0  # running averages of the gradients (momentum)
order = list(range(n_points))
history = []
started = time.perf_counter()
for epoch in range(1, epochs + 1):
    rng.shuffle(order)
    for start in range(0, n_points, BATCH_SIZE):
        batch = order[start : start + BATCH_SIZE]
        errors = [(w * xs[i] + b - ys[i], xs[i]) for i in batch]
        gw = 2 * sum(e * x for e, x in errors) / len(batch)
        gb = 2 * sum(e for e, _ in errors) / len(batch)
        vw = MOMENTUM * vw + (1 - MOMENTUM) * gw  # with momentum 0 this is the plain gradient
        vb = MOMENTUM * vb + (1 - MOMENTUM) * gb
        w, b = w - lr * vw, b - lr * vb
    loss = mse_of(w, b)
    if not math.isfinite(loss):
        raise FloatingPointError(f"training diverged at epoch {epoch} (loss {loss}); lower lr (now {lr})")
    history.append(loss)
seconds = time.perf_counter() - started
print(f"slope {w:.4f} (true {TRUE_SLOPE}), intercept {b:.4f} (true {TRUE_INTERCEPT}), "
      f"mse {history[-1]:.4f} after {epochs} epochs in {seconds:.2f} s")""",
    (
        "md",
        """\
## Save the model

`model.json` holds the fitted line with the parameters and metrics that produced it;
`loss.csv` the loss after each epoch.""",
    ),
    """\
model = {
    "slope": w,
    "intercept": b,
    "parameters": {
        "n_points": n_points, "noise": noise, "seed": seed,
        "epochs": epochs, "lr": lr, "optimizer": optimizer,
    },
    "metrics": {"mse": history[-1], "first_epoch_mse": history[0], "seconds": round(seconds, 3)},
}
(artifacts / "model.json").write_text(json.dumps(model, indent=2) + "\\n")
(artifacts / "loss.csv").write_text(
    "epoch,mse\\n" + "".join(f"{i},{loss:.6f}\\n" for i, loss in enumerate(history, 1))
)
sorted(p.name for p in artifacts.iterdir())""",
    ("md", "## Outputs\n\nWhat a run reports (`GET /runs/{id}` → `outputs`)."),
    (
        "outputs",
        """\
slope: float = w  # fitted slope (the data's true slope is 2.0)
intercept: float = b  # fitted intercept (true: -1.0)
mse: float = history[-1]  # mean squared error on all points after the last epoch""",
    ),
]


def main() -> None:
    write("iris_nearest", IRIS)
    write("fit_line", FIT, kind="training")


if __name__ == "__main__":
    main()
