"""Writes the sample notebooks of this folder. Run it after editing a cell here:

    python sample_notebooks/_make.py

Every sample runs in Jupyter (top to bottom, with its defaults) as well as behind `nb2svc serve`.
`iris_nearest` and `fit_line` use the standard library only, so they run on a fresh machine in
seconds. The machine-learning samples need the `samples` extra (`pip install -e '.[samples]'`:
torch, scikit-learn, Keras 3 and Talos); their data is scikit-learn's bundled digits, so nothing
is downloaded when they run:

- `train_torch` (training) fits a small torch MLP to the digits and writes `weights.pt`,
  `metadata.json`, `holdout.json` and `profile.json` (the reference for `nb2svc monitor`);
- `sweep_keras_talos` (training) runs a Talos scan over Keras 3 models on the torch backend;
- `serve_classifier` (serving) loads what `train_torch` wrote (`$CLASSIFIER_MODEL_DIR`, default
  `artifacts`) and classifies batches of digits.
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


class InvalidInput(ValueError):
    \"""Wrong input from the caller: behind nb2svc, a 422 naming `field` instead of a 500.\"""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


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
from deep inside the arithmetic. `InvalidInput` (defined with the model, so the notebook needs
nothing of nb2svc in Jupyter) tells nb2svc the caller is at fault: a 422 naming the field.""",
    ),
    """\
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


# --------------------------------------------------------------------------- train_torch (training)

TORCH: Cells = [
    (
        "md",
        """\
# Train a digit classifier with torch

A **training** notebook: a small multi-layer perceptron (MLP) learns to read handwritten digits
from scikit-learn's bundled *digits* data set (1,797 images of 8x8 pixels, 16 grey levels; it
ships inside scikit-learn, so nothing is downloaded). A seeded split keeps a quarter of the images
out of training; the accuracy and loss reported are measured on them.

The run writes four files to the artifacts folder, everything a serving notebook needs
(`serve_classifier.ipynb` loads them):

| File | What |
|---|---|
| `weights.pt` | the model's `state_dict` (`torch.load(path, weights_only=True)`) |
| `metadata.json` | classes, input size, feature scaling, architecture, parameters, metrics |
| `holdout.json` | the held-out images, their true labels and this model's predictions |
| `profile.json` | a sample of the training images, the reference `nb2svc monitor` compares requests with |

```
nb2svc serve sample_notebooks/train_torch.ipynb
nb2svc call http://127.0.0.1:8080 -p epochs=20 -p hidden_sizes=128,64
```

Run in Jupyter or with plain papermill, it writes to `./artifacts/` instead.

The `%pip` line is what an image of this notebook installs (`nb2svc build`); behind `nb2svc serve`
it is skipped. torch is pinned so a wheelhouse holding its CPU build (`--wheelhouse`) is used
rather than PyPI's much larger CUDA build (see docs/images.md).""",
    ),
    """\
%pip install -q torch==2.13.0 scikit-learn==1.9.1

import json
import math
import os
import time
from pathlib import Path
from typing import Literal  # used by the parameters cell's annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

# A model this small gains nothing from several CPU threads, and threads that spin while other
# processes (a service's workers, other runs) hold the cores slow training down many times over.
torch.set_num_threads(1)""",
    ("md", "## Parameters"),
    (
        "parameters",
        """\
epochs: int = 30  # passes over the training images
learning_rate: float = 0.001  # the optimizer's step size
hidden_sizes: list[int] = [64, 32]  # units of each hidden layer, input side first ([] fits a linear model)
optimizer: Literal["adam", "sgd"] = "adam"  # Adam, or plain SGD with momentum 0.9
batch_size: int = 64  # images per gradient step
test_fraction: float = 0.25  # share of the images held out of training to measure the model
seed: int = 0  # the same seed gives the same split, initial weights, batches and result""",
    ),
    (
        "md",
        """\
## Data

Each image is a row of 64 grey levels (0 to 16), row by row. Features are standardised with the
mean and standard deviation of the *training* images; both are saved in `metadata.json` so a
serving notebook scales its inputs exactly the same way. The split is stratified: every digit
keeps its share in both parts.""",
    ),
    """\
if epochs < 1 or learning_rate <= 0 or batch_size < 1:
    raise ValueError(
        f"epochs and batch_size must be at least 1 and learning_rate positive, "
        f"got epochs={epochs}, batch_size={batch_size}, learning_rate={learning_rate}"
    )
if any(size < 1 for size in hidden_sizes):
    raise ValueError(f"every hidden layer needs at least 1 unit, got hidden_sizes={hidden_sizes}")
if not 0.05 <= test_fraction <= 0.5:
    raise ValueError(f"test_fraction must be between 0.05 and 0.5, got {test_fraction}")

artifacts = Path(os.environ.get("NB2SVC_ARTIFACTS", "artifacts"))
artifacts.mkdir(parents=True, exist_ok=True)

digits = load_digits()
CLASSES = [int(c) for c in digits.target_names]
x_train, x_test, y_train, y_test = train_test_split(
    digits.data, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target
)
mean = x_train.mean(axis=0)
std = x_train.std(axis=0)
std[std == 0] = 1.0  # pixels that are blank in every training image: leave them at 0


def scaled(rows) -> torch.Tensor:
    return torch.tensor((rows - mean) / std, dtype=torch.float32)


X_train, X_test = scaled(x_train), scaled(x_test)
Y_train, Y_test = torch.tensor(y_train), torch.tensor(y_test)
len(X_train), len(X_test), X_train.shape[1]  # training images, held-out images, features""",
    (
        "md",
        """\
## Model and training

`Linear → ReLU` for each hidden size, then a `Linear` layer to one score (logit) per class, in a
`torch.nn.Sequential`: its `state_dict` keys (`0.weight`, `0.bias`, `2.weight`, …) follow from
the sizes alone, so the serving notebook rebuilds the same module from `metadata.json`.
`torch.manual_seed` fixes the initial weights, and a seeded generator the order of the batches.""",
    ),
    """\
def build_mlp(n_features: int, hidden: list[int], n_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


torch.manual_seed(seed)
model = build_mlp(X_train.shape[1], hidden_sizes, len(CLASSES))
if optimizer == "adam":
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
else:
    opt = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
batches = torch.Generator().manual_seed(seed)

history = []  # mean training loss of each epoch
started = time.perf_counter()
for epoch in range(1, epochs + 1):
    model.train()
    order = torch.randperm(len(X_train), generator=batches)
    total = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        opt.zero_grad()
        batch_loss = loss_fn(model(X_train[idx]), Y_train[idx])
        batch_loss.backward()
        opt.step()
        total += batch_loss.item() * len(idx)
    history.append(total / len(X_train))
    if not math.isfinite(history[-1]):
        raise FloatingPointError(
            f"training diverged at epoch {epoch} (loss {history[-1]}); lower learning_rate (now {learning_rate})"
        )
seconds = time.perf_counter() - started
print(f"{epochs} epochs in {seconds:.2f} s, last training loss {history[-1]:.4f}")""",
    (
        "md",
        """\
## Evaluation on the held-out images""",
    ),
    """\
model.eval()
with torch.inference_mode():
    logits = model(X_test)
    test_loss = loss_fn(logits, Y_test).item()
    predicted = logits.argmax(dim=1)
test_accuracy = (predicted == Y_test).float().mean().item()
print(f"held-out accuracy {test_accuracy:.4f}, loss {test_loss:.4f} ({len(Y_test)} images)")""",
    (
        "md",
        """\
## Save the model

`holdout.json` keeps the held-out images as they come from the data set (raw grey levels, not
scaled), so they can be sent to a served model as they are and its answers compared with
`predicted`.""",
    ),
    """\
torch.save(model.state_dict(), artifacts / "weights.pt")
metadata = {
    "format": "nb2svc-sample-mlp/1",
    "classes": CLASSES,
    "n_features": int(X_train.shape[1]),
    "input": "64 grey levels (0-16) of an 8x8 image, row by row",
    "scaling": {"mean": mean.tolist(), "std": std.tolist()},  # x_scaled = (x - mean) / std
    "architecture": {
        "kind": "mlp",
        "hidden_sizes": hidden_sizes,
        "activation": "relu",
        "layout": "torch.nn.Sequential(Linear, ReLU, ..., Linear)",
    },
    "parameters": {
        "epochs": epochs, "learning_rate": learning_rate, "hidden_sizes": hidden_sizes,
        "optimizer": optimizer, "batch_size": batch_size, "test_fraction": test_fraction, "seed": seed,
    },
    "metrics": {
        "accuracy": test_accuracy, "loss": test_loss, "train_loss": history[-1],
        "n_train": len(X_train), "n_test": len(X_test), "seconds": round(seconds, 3),
    },
    "torch": torch.__version__,
}
(artifacts / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\\n")
holdout = {
    "features": x_test.tolist(),
    "labels": [int(v) for v in y_test],
    "predicted": predicted.tolist(),
}
(artifacts / "holdout.json").write_text(json.dumps(holdout) + "\\n")""",
    (
        "md",
        """\
## A profile of the training data, for `nb2svc monitor`

`profile.json` keeps a sample of the training images (at most 1,000, raw grey levels) as a request to
`serve_classifier` sends them: `features[0]` is the first image of a request's batch. With
`nb2svc monitor --reference URL/runs/ID`, what the served model is asked is compared with the data it
was trained on, pixel by pixel, rather than with its first users' requests. Without nb2svc installed
(plain Jupyter) the notebook runs the same and writes no profile.""",
    ),
    """\
try:
    from nb2svc.profile import write_profile
except ImportError:  # nb2svc is not installed here: no profile, nothing else changes
    write_profile = None
if write_profile is not None:
    write_profile({"features[0]": x_train}, artifacts / "profile.json", seed=seed)
sorted(p.name for p in artifacts.iterdir())""",
    ("md", "## Outputs\n\nWhat a run reports (`GET /runs/{id}` → `outputs`)."),
    (
        "outputs",
        """\
accuracy: float = test_accuracy  # share of the held-out images classified correctly
loss: float = test_loss  # mean cross-entropy on the held-out images
train_loss: list[float] = history  # mean training loss of each epoch""",
    ),
]


# --------------------------------------------------------------------------- sweep_keras_talos (training)

SWEEP: Cells = [
    (
        "md",
        """\
# A hyperparameter sweep: Keras 3 on torch, scanned by Talos

A **training** notebook: [Talos](https://github.com/autonomio/talos) trains one small Keras model
per combination of hyperparameters (a *round*), drawn from the grid the parameters below span, and
keeps each round's validation scores. The data is scikit-learn's bundled *digits* (8x8 images of
handwritten digits; nothing is downloaded).

Keras 3 runs on the **torch** backend here: `KERAS_BACKEND` must be set before `keras` is first
imported, so the first code cell sets it (unless the environment already chose a backend).

The run reports the best combination and its validation accuracy, and writes the whole table of
rounds to `scan.csv` in the artifacts folder:

```
nb2svc serve sample_notebooks/sweep_keras_talos.ipynb
nb2svc call http://127.0.0.1:8080 -p first_neurons=8,16 -p epochs=5 -p round_limit=4
```""",
    ),
    """\
%pip install -q torch==2.13.0 keras==3.15.1 talos==2.0.10 scikit-learn==1.9.1

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported anywhere

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any  # used by the outputs cell's annotations

import keras
import talos
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

torch.set_num_threads(1)  # small models: one thread is as fast, and never fights other processes for cores
keras.backend.backend(), keras.__version__, talos.__version__""",
    (
        "md",
        """\
## Parameters

Each list is the set of values to try for one hyperparameter; the grid is every combination of
them (with the defaults, 3 x 2 x 2 x 2 = 24). A scan trains `round_limit` of them, drawn at random
with `seed`.""",
    ),
    (
        "parameters",
        """\
first_neurons: list[int] = [16, 32, 64]  # hidden-layer sizes to try
activations: list[str] = ["relu", "elu"]  # hidden-layer activations to try (Keras names)
dropouts: list[float] = [0.0, 0.2]  # dropout rates after the hidden layer to try
learning_rates: list[float] = [0.001, 0.01]  # Adam learning rates to try
epochs: int = 10  # passes over the training images in each round
batch_size: int = 32  # images per gradient step
round_limit: int = 12  # how many combinations to train (at most the grid's size)
val_fraction: float = 0.25  # share of the images held out to score each round
seed: int = 7  # the same seed draws the same combinations, split and initial weights""",
    ),
    (
        "md",
        """\
## Check the parameters, then the data

An unknown activation would otherwise fail inside the first round, deep in Keras; checking here
gives a message that names the parameter.""",
    ),
    """\
grid = {
    "first_neuron": first_neurons,
    "activation": activations,
    "dropout": dropouts,
    "lr": learning_rates,
}
empty = [name for name, values in grid.items() if not values]
if empty:
    raise ValueError(f"each hyperparameter needs at least one value to try; empty: {', '.join(empty)}")
for name in activations:
    try:
        keras.activations.get(name)
    except ValueError:
        raise ValueError(f"activations: {name!r} is not a Keras activation (e.g. relu, elu, tanh)") from None
if min(first_neurons) < 1 or not all(0 <= d < 1 for d in dropouts) or min(learning_rates) <= 0:
    raise ValueError(
        f"first_neurons must be at least 1, dropouts in [0, 1) and learning_rates positive; "
        f"got {first_neurons}, {dropouts}, {learning_rates}"
    )
if epochs < 1 or batch_size < 1 or round_limit < 1 or not 0.05 <= val_fraction <= 0.5:
    raise ValueError(
        f"epochs, batch_size and round_limit must be at least 1 and val_fraction in [0.05, 0.5]; "
        f"got {epochs}, {batch_size}, {round_limit}, {val_fraction}"
    )
grid_size = 1
for values in grid.values():
    grid_size *= len(values)
rounds_to_run = min(round_limit, grid_size)

artifacts = Path(os.environ.get("NB2SVC_ARTIFACTS", "artifacts"))
artifacts.mkdir(parents=True, exist_ok=True)

digits = load_digits()
x = (digits.data / 16.0).astype("float32")  # grey levels 0-16 → 0-1
x_train, x_val, y_train, y_val = train_test_split(
    x, digits.target, test_size=val_fraction, random_state=seed, stratify=digits.target
)
grid_size, rounds_to_run, len(x_train), len(x_val)  # combinations, rounds, training and validation images""",
    (
        "md",
        """\
## The model of one round

Talos calls this function once per round with the training and validation data and that round's
combination (`params`), and reads the scores from the Keras `History` it returns. Talos seeds
Python's, NumPy's and torch's generators before each round (with `seed` plus the round's number),
and Keras on torch draws its initial weights, dropout masks and shuffles from them: the same
parameters give the same table.""",
    ),
    """\
def digits_model(x_train, y_train, x_val, y_val, params):
    model = keras.Sequential(
        [
            keras.Input(shape=(x_train.shape[1],)),
            keras.layers.Dense(params["first_neuron"], activation=params["activation"]),
            keras.layers.Dropout(params["dropout"]),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=params["lr"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(
        x_train, y_train, validation_data=(x_val, y_val),
        epochs=params["epochs"], batch_size=params["batch_size"], verbose=0,
    )
    return history, model""",
    (
        "md",
        """\
## The scan

`talos.Scan` keeps its own record of the experiment (checkpoints, one JSON line per round) in a
folder; a temporary one here, since the table below is what this notebook keeps. Talos turns an
interrupt (Ctrl-C, *Interrupt kernel*) into a scan that ends early with status `paused` instead
of an error, so the status is checked: a partial scan must not be reported as a finished one.""",
    ),
    """\
record = Path(tempfile.mkdtemp(prefix="talos-"))
started = time.perf_counter()
try:
    scan = talos.Scan(
        x=x_train, y=y_train, x_val=x_val, y_val=y_val,
        params={**grid, "epochs": [epochs], "batch_size": [batch_size]},
        model=digits_model,
        experiment_name="digits_sweep",
        experiment_dir=record / "digits_sweep",
        round_limit=rounds_to_run,
        seed=seed,
        reduction_metric="val_accuracy",  # the score that ranks the rounds (higher is better)
        save_weights=False,  # the table is what we keep, not 24 models
        disable_progress_bar=True,
    )
finally:
    shutil.rmtree(record, ignore_errors=True)
seconds = time.perf_counter() - started
if scan.status != "complete":
    raise RuntimeError(f"the scan ended {scan.status} after {len(scan.data)} of {rounds_to_run} rounds")
print(f"{len(scan.data)} rounds in {seconds:.1f} s")""",
    (
        "md",
        """\
## The table of rounds

One row per round, best first: its combination, the validation and training scores after its
last epoch, and how long it took. Saved as `scan.csv`.""",
    ),
    """\
columns = [*grid, "val_accuracy", "val_loss", "accuracy", "loss", "duration"]
table = scan.data[columns].rename(columns={"duration": "seconds"})
table.insert(0, "round", range(1, len(table) + 1))
table = table.sort_values(["val_accuracy", "val_loss"], ascending=[False, True], kind="stable")
table.to_csv(artifacts / "scan.csv", index=False)

best = table.iloc[0]
best_combination = {name: best[name].item() if hasattr(best[name], "item") else best[name] for name in grid}
table.head()""",
    ("md", "## Outputs\n\nWhat a run reports (`GET /runs/{id}` → `outputs`)."),
    (
        "outputs",
        """\
best_params: dict[str, Any] = best_combination  # the best round's first_neuron, activation, dropout and lr
best_score: float = float(best["val_accuracy"])  # its validation accuracy (share of held-out images read right)
best_val_loss: float = float(best["val_loss"])  # its validation loss (cross-entropy)
rounds: int = len(table)  # how many combinations were trained
grid_size: int = grid_size  # how many combinations the parameters span""",
    ),
]


# --------------------------------------------------------------------------- serve_classifier (serving)

SERVE: Cells = [
    (
        "md",
        """\
# Serve the digit classifier trained by `train_torch`

A **serving** notebook: the setup cells load the model that `train_torch.ipynb` wrote
(`weights.pt` and `metadata.json`) once; each request sends a batch of images and gets one label
per image, with the probabilities behind it.

The model folder is `$CLASSIFIER_MODEL_DIR`, by default `artifacts` — relative to this notebook's
folder, where `train_torch` writes when it runs in Jupyter beside it. So in Jupyter: run
`train_torch.ipynb`, then this notebook. Behind nb2svc, point it at a training run's artifacts:

```
CLASSIFIER_MODEL_DIR=/path/to/run/artifacts nb2svc serve sample_notebooks/serve_classifier.ipynb
nb2svc call http://127.0.0.1:8080 --json '{"features": [[0, 0, 5, 13, ...]], "top_k": 2}'
```""",
    ),
    """\
%pip install -q torch==2.13.0

import json
import os
from pathlib import Path

import torch
from torch import nn

torch.set_num_threads(1)  # one thread per worker process: scale out with NB2SVC_WORKERS instead


class InvalidInput(ValueError):
    \"""Wrong input from the caller: behind nb2svc, a 422 naming `field` instead of a 500.\"""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field""",
    (
        "md",
        """\
## Load the model

`metadata.json` says how to rebuild the module (the hidden sizes) and how inputs were scaled;
the weights are loaded with `weights_only=True`, so the file can hold tensors only, never code
to run.""",
    ),
    """\
MODEL_DIR = Path(os.environ.get("CLASSIFIER_MODEL_DIR", "artifacts"))
if not (MODEL_DIR / "metadata.json").is_file() or not (MODEL_DIR / "weights.pt").is_file():
    raise FileNotFoundError(
        f"no trained model in {MODEL_DIR.resolve()} (weights.pt and metadata.json): "
        "run train_torch.ipynb first, or set CLASSIFIER_MODEL_DIR to a training run's artifacts"
    )
META = json.loads((MODEL_DIR / "metadata.json").read_text())
CLASSES: list[int] = META["classes"]
N_FEATURES: int = META["n_features"]
MEAN = torch.tensor(META["scaling"]["mean"], dtype=torch.float32)
STD = torch.tensor(META["scaling"]["std"], dtype=torch.float32)


def build_mlp(n_features: int, hidden: list[int], n_classes: int) -> nn.Sequential:
    \"""The module train_torch trains: Linear → ReLU per hidden size, then Linear to the classes.\"""
    layers: list[nn.Module] = []
    width = n_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


MODEL = build_mlp(N_FEATURES, META["architecture"]["hidden_sizes"], len(CLASSES))
MODEL.load_state_dict(torch.load(MODEL_DIR / "weights.pt", weights_only=True))
MODEL.eval()
META["architecture"], META["metrics"]["accuracy"]""",
    (
        "md",
        """\
## Parameters

`features` is a batch: one row per image, each row the image's 64 grey levels (0 to 16), row by
row — one image is a batch of one. The example is the data set's first image, a zero.""",
    ),
    (
        "parameters",
        """\
features: list[list[float]] = [[
    0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0,
    0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0,
]]  # required: a batch of 8x8 images, one row of 64 grey levels (0-16) each
top_k: int = 3  # how many classes to list per image in `top`, most likely first""",
    ),
    (
        "md",
        """\
## Prediction

The types already guarantee a list of lists of numbers; the row length is checked here, so a
wrong-sized image gets a message naming the rows at fault rather than a matrix-shape error from
inside torch. `InvalidInput` (defined above, so the notebook needs nothing of nb2svc in Jupyter)
is how a notebook says "the caller's input is wrong": nb2svc answers it with a 422 naming the
field, not a 500.""",
    ),
    """\
if not features:
    raise InvalidInput("features must hold at least one image (a row of 64 grey levels)", "features")
wrong = [(i, len(row)) for i, row in enumerate(features) if len(row) != N_FEATURES]
if wrong:
    shown = ", ".join(f"row {i} has {n}" for i, n in wrong[:5]) + (", ..." if len(wrong) > 5 else "")
    raise InvalidInput(
        f"each row of features must hold {N_FEATURES} values (an 8x8 image, row by row); "
        f"{len(wrong)} of {len(features)} do not: {shown}",
        "features",
    )
if not 1 <= top_k <= len(CLASSES):
    raise InvalidInput(f"top_k must be between 1 and {len(CLASSES)}, got {top_k}", "top_k")

with torch.inference_mode():
    x = (torch.tensor(features, dtype=torch.float32) - MEAN) / STD
    proba = torch.softmax(MODEL(x), dim=1)
    best_p, best_i = proba.topk(top_k, dim=1)""",
    (
        "md",
        """\
## Outputs

`probabilities[i][j]` is image *i*'s probability of class `CLASSES[j]` (the digits 0-9, in
order); `top` lists the `top_k` most likely classes per image, as JSON object keys.""",
    ),
    (
        "outputs",
        """\
labels: list[int] = [CLASSES[i] for i in best_i[:, 0].tolist()]  # the most likely digit of each image
probabilities: list[list[float]] = proba.tolist()  # each image's probability of each digit, 0 to 9
top: list[dict[str, float]] = [
    {str(CLASSES[i]): p for i, p in zip(row_i, row_p)} for row_i, row_p in zip(best_i.tolist(), best_p.tolist())
]  # each image's top_k digits and their probabilities, most likely first
labels, top""",
    ),
]


def main() -> None:
    write("iris_nearest", IRIS)
    write("fit_line", FIT, kind="training")
    write("train_torch", TORCH, kind="training")
    write("sweep_keras_talos", SWEEP, kind="training")
    write("serve_classifier", SERVE)


if __name__ == "__main__":
    main()
