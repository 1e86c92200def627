"""The train → serve loop as images: train_torch in a container with a mounted runs folder, then
serve_classifier built with the trained weights baked in (`--artifact`), torch from a wheelhouse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from nb2svc import inspect_notebook
from nb2svc.build import build, run
from nb2svc.render import Artifact, BuildOptions, render

from .conftest import BASE, ROOT, free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SAMPLES = ROOT / "sample_notebooks"
TORCH_PARAMS = {"epochs": 12, "learning_rate": 0.005, "hidden_sizes": [32], "batch_size": 32, "seed": 3}
IN_IMAGE = "/srv/nb2svc/artifacts/model"


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torch's wheel as pip here resolves it: the CPU build on this project's machines (/opt/wheels)."""
    out = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "torch==2.13.0", "-d", str(out)], check=True
    )
    wheels = list(out.glob("torch-*.whl"))
    assert wheels, "pip download gave no torch wheel"
    return out


def _train(client: Any, image: str, runs: Path, containers: list[str], params: dict[str, Any]) -> Path:
    """Run train_torch's image on ``runs`` (mounted), start a run, wait: the run's artifacts folder."""
    running = run(image, port=free_port(), client=client, volumes={str(runs): "/var/lib/nb2svc/runs"})
    containers.append(running.container_id)
    started = httpx.post(f"{running.url}/runs", json=params, timeout=30)
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status = httpx.get(f"{running.url}/runs/{run_id}", timeout=30).json()
        if status["status"] not in {"queued", "running"}:
            break
        time.sleep(0.5)
    assert status["status"] == "succeeded", status
    assert status["outputs"]["accuracy"] > 0.85, status["outputs"]  # ten digits: chance is 0.1
    client.containers.get(running.container_id).remove(force=True)
    artifacts = runs / run_id / "artifacts"
    assert sorted(p.name for p in artifacts.iterdir()) == [
        "holdout.json",
        "metadata.json",
        "profile.json",
        "weights.pt",
    ]
    return artifacts


@pytest.mark.timeout(1200)  # a cold run installs torch in an image layer: minutes on 2 cores
def test_train_in_a_container_then_serve_the_weights_baked_into_an_image(
    client: Any, wheelhouse: Path, containers: list[str], tmp_path: Path
) -> None:
    options = BuildOptions(backend="openfaas", base=BASE, wheelhouse=wheelhouse)
    trainer = build(
        render(inspect_notebook(SAMPLES / "train_torch.ipynb"), tmp_path / "train-ctx", options),
        "nb2svc-test/train-torch:1",
        client=client,
    )
    runs = tmp_path / "runs"
    runs.mkdir()
    os.chown(runs, 10001, 10001)  # the image's user writes the runs
    artifacts = _train(client, trainer.ref, runs, containers, TORCH_PARAMS)

    def serving_image(model: Path, ctx: str, tag: str, log: list[str] | None = None) -> str:
        serving = BuildOptions(
            backend="openfaas",
            base=BASE,
            wheelhouse=wheelhouse,
            artifacts=(Artifact(model, IN_IMAGE),),
            env=(("CLASSIFIER_MODEL_DIR", IN_IMAGE),),
        )
        spec = inspect_notebook(SAMPLES / "serve_classifier.ipynb")
        progress = log.append if log is not None else (lambda _line: None)
        return build(render(spec, tmp_path / ctx, serving), tag, client=client, progress=progress).ref

    image = serving_image(artifacts, "serve-ctx", "nb2svc-test/digits:1")
    baked = json.loads(client.images.get(image).labels["nb2svc.artifacts"])
    assert [a["path"] for a in baked] == [IN_IMAGE]
    served = run(image, port=free_port(), client=client)
    containers.append(served.container_id)
    holdout = json.loads((artifacts / "holdout.json").read_text())
    rows = holdout["features"][:100]
    answer = httpx.post(f"{served.url}/invoke", json={"features": rows, "top_k": 2}, timeout=60)
    assert answer.status_code == 200, answer.text
    agree = sum(a == b for a, b in zip(answer.json()["labels"], holdout["predicted"][:100], strict=True))
    assert agree >= 98, f"the served model agrees with the trained one on {agree} of 100 held-out images"
    correct = sum(a == b for a, b in zip(answer.json()["labels"], holdout["labels"][:100], strict=True))
    assert correct > 85
    wrong = httpx.post(f"{served.url}/invoke", json={"features": [[1.0, 2.0]]}, timeout=60)
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["field"] == "features"

    # A retrained model: only the artifact and notebook layers are rebuilt, torch's layer is reused.
    retrained = _train(client, trainer.ref, runs, containers, {**TORCH_PARAMS, "seed": 4})
    # Seeded training may give the same bytes as a run before this one: a note new on every run keeps
    # this build a real one (not a re-tag of an image an earlier run left), so its cache use shows.
    (retrained / "trained-by.txt").write_text(f"test run {uuid.uuid4()}\n")
    log: list[str] = []
    serving_image(retrained, "serve-ctx-2", "nb2svc-test/digits:2", log)
    cached = {step.split(" : ", 1)[1] for step, nxt in pairwise(log) if step.startswith("Step ") and "cache" in nxt}
    assert any(step.startswith("COPY --from=deps") for step in cached), log
    assert not any(step.startswith("COPY artifacts/") for step in cached)
