"""The machine-learning samples behind a real `nb2svc serve`: train, sweep, then serve what was trained.

train_torch is run once for the module (small parameters); its artifacts, downloaded over HTTP,
are the model serve_classifier loads. Everything runs on scikit-learn's bundled digits.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, Service, conforms

pytestmark = pytest.mark.slow

SAMPLES = ROOT / "sample_notebooks"
ARTIFACTS = ["holdout.json", "metadata.json", "profile.json", "weights.pt"]
# Small enough for a few seconds on 2 cores; still far above chance (0.1 for ten digits).
TORCH_PARAMS = {"epochs": 12, "learning_rate": 0.005, "hidden_sizes": [32], "batch_size": 32, "seed": 3}


def start_run(svc: Service, openapi: dict[str, Any], params: dict[str, Any], seconds: float = 120) -> dict[str, Any]:
    """POST /runs, then poll GET /runs/{id} until the run is done; every answer must conform."""
    r = svc.post("/runs", params)
    assert r.status_code == 202, r.text
    conforms(openapi, "/runs", "post", r)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = svc.http.get(f"/runs/{r.json()['id']}")
        conforms(openapi, "/runs/{id}", "get", got)
        run: dict[str, Any] = got.json()
        if run["status"] not in {"queued", "running"}:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {r.json()['id']} did not finish within {seconds} s")


def artifact(svc: Service, openapi: dict[str, Any], run: dict[str, Any], name: str) -> bytes:
    r = svc.http.get(f"{run['links']['artifacts']}{name}")
    assert r.status_code == 200, (name, r.text)
    conforms(openapi, "/runs/{id}/artifacts/{path}", "get", r)
    return r.content


@pytest.fixture(scope="module")
def torch_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    runs = tmp_path_factory.mktemp("train-torch-runs")
    svc = Service(SAMPLES / "train_torch.ipynb", {"NB2SVC_RUNS_DIR": str(runs)})
    try:
        yield svc.start()
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def trained(torch_service: Service, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One train_torch run, and a folder holding its artifacts as downloaded from the service."""
    svc = torch_service
    openapi = svc.http.get("/openapi.json").json()
    run = start_run(svc, openapi, TORCH_PARAMS)
    assert run["status"] == "succeeded", run["error"]
    model_dir = tmp_path_factory.mktemp("classifier")
    for name in run["artifacts"]:
        (model_dir / name).write_bytes(artifact(svc, openapi, run, name))
    return run, model_dir


def test_train_torch_learns_the_digits(trained: tuple[dict[str, Any], Path]) -> None:
    run, model_dir = trained
    out = run["outputs"]
    assert run["parameters"] == TORCH_PARAMS
    assert out["accuracy"] > 0.85, out  # ten classes: chance is 0.1
    assert 0 < out["loss"] < 0.6, out
    assert len(out["train_loss"]) == TORCH_PARAMS["epochs"]
    assert out["train_loss"][-1] < out["train_loss"][0] / 3, out["train_loss"]  # it learned
    assert run["artifacts"] == ARTIFACTS

    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["classes"] == list(range(10)) and meta["n_features"] == 64
    assert meta["architecture"]["hidden_sizes"] == [32]
    assert meta["parameters"] == {"optimizer": "adam", "test_fraction": 0.25, **TORCH_PARAMS}
    assert meta["metrics"]["accuracy"] == out["accuracy"] and meta["metrics"]["loss"] == out["loss"]
    assert len(meta["scaling"]["mean"]) == len(meta["scaling"]["std"]) == 64

    holdout = json.loads((model_dir / "holdout.json").read_text())
    n = len(holdout["labels"])
    assert n == meta["metrics"]["n_test"] == math.ceil(1797 * 0.25) == len(holdout["predicted"])
    assert all(len(row) == 64 and all(0 <= v <= 16 for v in row) for row in holdout["features"])  # raw grey levels
    right = sum(p == y for p, y in zip(holdout["predicted"], holdout["labels"], strict=True))
    assert right / n == pytest.approx(out["accuracy"])  # the predictions are the ones the accuracy counts

    import torch  # here, not at the top: collecting the other tests need not import torch

    weights = torch.load(model_dir / "weights.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        "0.weight": (32, 64),
        "0.bias": (32,),
        "2.weight": (10, 32),
        "2.bias": (10,),
    }


def test_train_torch_is_reproducible_and_takes_its_parameters(
    torch_service: Service, trained: tuple[dict[str, Any], Path]
) -> None:
    svc = torch_service
    openapi = svc.http.get("/openapi.json").json()
    again = start_run(svc, openapi, TORCH_PARAMS)
    assert again["status"] == "succeeded", again["error"]
    assert again["outputs"] == trained[0]["outputs"]  # same seed, same split, same weights, same numbers

    sgd = start_run(svc, openapi, {**TORCH_PARAMS, "optimizer": "sgd", "hidden_sizes": [], "learning_rate": 0.05})
    assert sgd["status"] == "succeeded", sgd["error"]
    assert sgd["outputs"]["accuracy"] > 0.85  # a linear model reads digits too
    meta = json.loads(artifact(svc, openapi, sgd, "metadata.json"))
    assert meta["architecture"]["hidden_sizes"] == [] and meta["parameters"]["optimizer"] == "sgd"

    bad = start_run(svc, openapi, {"hidden_sizes": [16, 0]})
    assert bad["status"] == "failed"
    assert bad["error"]["ename"] == "ValueError" and "hidden_sizes=[16, 0]" in bad["error"]["evalue"]
    refused = svc.post("/runs", {"optimizer": "rmsprop"})
    assert refused.status_code == 422 and refused.json()["detail"][0]["field"] == "optimizer"
    conforms(openapi, "/runs", "post", refused)


def test_talos_sweep_reports_the_best_round(tmp_path: Path) -> None:
    svc = Service(SAMPLES / "sweep_keras_talos.ipynb", {"NB2SVC_RUNS_DIR": str(tmp_path / "runs")})
    try:
        svc.start()
        openapi = svc.http.get("/openapi.json").json()
        params = {
            "first_neurons": [8, 32],
            "activations": ["relu", "tanh"],
            "dropouts": [0.0],
            "learning_rates": [0.01],
            "epochs": 4,
            "round_limit": 3,
            "seed": 1,
        }
        run = start_run(svc, openapi, params)
        assert run["status"] == "succeeded", run["error"]
        out = run["outputs"]
        assert (out["rounds"], out["grid_size"]) == (3, 4)
        best = out["best_params"]
        assert set(best) == {"first_neuron", "activation", "dropout", "lr"}
        assert best["first_neuron"] in {8, 32} and best["activation"] in {"relu", "tanh"}
        assert (best["dropout"], best["lr"]) == (0.0, 0.01)
        assert 0.7 < out["best_score"] <= 1.0, out  # four epochs on the digits: far above chance
        assert 0 < out["best_val_loss"] < 2.3, out  # below the loss of a uniform guess (ln 10)
        assert run["artifacts"] == ["scan.csv"]

        rows = list(csv.DictReader(io.StringIO(artifact(svc, openapi, run, "scan.csv").decode())))
        assert len(rows) == 3 and sorted(int(r["round"]) for r in rows) == [1, 2, 3]
        assert {"first_neuron", "activation", "dropout", "lr", "val_accuracy", "val_loss", "accuracy"} <= set(rows[0])
        scores = [float(r["val_accuracy"]) for r in rows]
        assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(out["best_score"])
        assert (int(rows[0]["first_neuron"]), rows[0]["activation"]) == (best["first_neuron"], best["activation"])
        combos = {(r["first_neuron"], r["activation"]) for r in rows}
        assert len(combos) == 3  # three different combinations, none trained twice

        bad = start_run(svc, openapi, {**params, "activations": ["relu", "relux"]})
        assert bad["status"] == "failed"
        assert bad["error"]["ename"] == "ValueError" and "'relux'" in bad["error"]["evalue"]
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def classifier(trained: tuple[dict[str, Any], Path]) -> Iterator[tuple[Service, dict[str, Any]]]:
    """serve_classifier on the model train_torch wrote, and the OpenAPI document it serves."""
    svc = Service(SAMPLES / "serve_classifier.ipynb", {"CLASSIFIER_MODEL_DIR": str(trained[1])})
    try:
        svc.start()
        yield svc, svc.http.get("/openapi.json").json()
    finally:
        svc.stop()


def test_served_model_agrees_with_the_trained_one(
    classifier: tuple[Service, dict[str, Any]], trained: tuple[dict[str, Any], Path]
) -> None:
    svc, openapi = classifier
    holdout = json.loads((trained[1] / "holdout.json").read_text())
    r = svc.post("/invoke", {"features": holdout["features"], "top_k": 2})
    assert r.status_code == 200, r.text
    conforms(openapi, "/invoke", "post", r)
    out = r.json()
    n = len(holdout["labels"])
    assert len(out["labels"]) == len(out["probabilities"]) == len(out["top"]) == n
    agree = sum(a == b for a, b in zip(out["labels"], holdout["predicted"], strict=True))
    assert agree >= n - 2, f"the served model agrees with the trained one on {agree} of {n} images"
    right = sum(a == b for a, b in zip(out["labels"], holdout["labels"], strict=True))
    assert right / n == pytest.approx(trained[0]["outputs"]["accuracy"], abs=0.01)
    for label, probs, top in zip(out["labels"], out["probabilities"], out["top"], strict=True):
        assert len(probs) == 10 and sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert probs.index(max(probs)) == label
        assert len(top) == 2 and next(iter(top)) == str(label)  # most likely first
        assert list(top.values()) == sorted(top.values(), reverse=True)
        assert top[str(label)] == pytest.approx(max(probs))

    one = svc.post("/invoke", {"features": [holdout["features"][0]], "top_k": 1})  # one image: a batch of one
    assert one.status_code == 200 and one.json()["labels"] == holdout["predicted"][:1]
    conforms(openapi, "/invoke", "post", one)
    example = svc.post("/invoke", {"features": openapi_example(openapi)})  # the documented example, a zero
    assert example.status_code == 200 and example.json()["labels"] == [0], example.text


def openapi_example(openapi: dict[str, Any]) -> Any:
    """The example value the OpenAPI document gives for `features` (the notebook's own default)."""
    body = openapi["paths"]["/invoke"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in body:
        body = openapi["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    return body["properties"]["features"]["examples"][0]


@pytest.mark.parametrize(
    "body",
    [{"features": [1.0, 2.0]}, {"features": [[1.0, "a"]]}, {}, {"features": [[0.0] * 64], "top_k": "2"}],
    ids=["not-a-batch", "not-numbers", "missing", "bad-top-k"],
)
def test_ill_typed_requests_are_422(classifier: tuple[Service, dict[str, Any]], body: dict[str, Any]) -> None:
    svc, openapi = classifier
    r = svc.post("/invoke", body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error"
    conforms(openapi, "/invoke", "post", r)


# The notebook's own checks raise InvalidInput: nb2svc answers 422 naming the field, not 500.
@pytest.mark.parametrize(
    ("body", "says", "field"),
    [
        ({"features": [[0.0] * 64, [1.0, 2.0, 3.0]]}, ["64 values", "row 1 has 3"], "features"),
        ({"features": [[0.0] * 65]}, ["64 values", "row 0 has 65"], "features"),
        ({"features": []}, ["at least one image"], "features"),
        ({"features": [[0.0] * 64], "top_k": 0}, ["top_k", "between 1 and 10"], "top_k"),
    ],
    ids=["short-row", "long-row", "empty-batch", "top-k-0"],
)
def test_input_the_types_cannot_rule_out_is_a_client_error(
    classifier: tuple[Service, dict[str, Any]], body: dict[str, Any], says: list[str], field: str
) -> None:
    svc, openapi = classifier
    r = svc.post("/invoke", body)
    assert r.headers["content-type"].startswith("application/json")
    assert all(s in r.json()["message"] for s in says), r.json()  # the message names the problem either way
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error" and [d["field"] for d in r.json()["detail"]] == [field]
    conforms(openapi, "/invoke", "post", r)
    assert svc.post("/invoke", {"features": [[0.0] * 64]}).status_code == 200  # and the service goes on
