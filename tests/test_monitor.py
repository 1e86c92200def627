"""`nb2svc monitor` over a real service's prediction log: drift per typed parameter, accuracy from feedback,
its /report and /metrics, and the retrain rule against a real training service (SPEC section 8)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from .conftest import Postgres, Service, free_port
from .feedback_notebook import write_scorer

pytestmark = pytest.mark.slow
N = 300


def monitor(*args: str, config: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "nb2svc.cli", "monitor", "--once", "--json", *args]
    if config is not None:
        cmd += ["--config", str(config)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def send(svc: Service, bodies: list[dict[str, Any]]) -> list[str]:
    ids = []
    for body in bodies:
        r = svc.post("/invoke", body)
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-prediction-id"])
    return ids


def wait_logged(svc: Service, n: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in svc.http.get("/metrics").text.splitlines():
            if line.startswith("nb2svc_predictions_logged_total ") and float(line.split()[1]) >= n:
                return
        time.sleep(0.1)
    raise AssertionError(f"{n} predictions were never logged")


def reference_bodies() -> list[dict[str, Any]]:
    rng = random.Random(7)  # noqa: S311  # test data
    return [
        {"x": rng.gauss(0, 1), "colour": rng.choice(["red", "green"]), "features": [rng.gauss(0, 1), rng.uniform(0, 1)]}
        for _ in range(N)
    ]


def reordered(bodies: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The same values of each parameter, each column shuffled on its own: no distribution changes."""
    rng = random.Random(seed)  # noqa: S311  # test data
    columns = {k: [b[k] for b in bodies] for k in bodies[0]}
    for values in columns.values():
        rng.shuffle(values)
    return [{k: columns[k][i] for k in columns} for i in range(len(bodies))]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("monitor")
    url = f"sqlite:///{tmp / 'log.sqlite'}"
    svc = Service(write_scorer(tmp), {"NB2SVC_LOG_URL": url}).start()
    ref = reference_bodies()
    send(svc, ref)
    yield svc, url, ref
    svc.stop()


def test_drift_per_parameter_by_its_type(scored: Any) -> None:
    svc, url, ref = scored
    flags = ("--log", url, "--reference", f"first:{N}", "--window", str(N))
    # 1. the reference's values again, reordered: no parameter drifts
    send(svc, reordered(ref, 1))
    wait_logged(svc, 2 * N)
    report = monitor(*flags)
    assert set(report["parameters"]) == {"x", "colour", "features[0]", "features[1]", "note"}
    assert report["drifted"] == [], report["parameters"]
    assert report["parameters"]["x"]["test"] == "ks" and report["parameters"]["colour"]["test"] == "chi_squared"
    assert report["parameters"]["x"]["p_value"] == 1.0
    # 2. x shifted by 3 standard deviations (the rest reordered): drift on x alone
    shifted = [{**b, "x": b["x"] + 3.0} for b in reordered(ref, 2)]
    send(svc, shifted)
    wait_logged(svc, 3 * N)
    report = monitor(*flags)
    assert report["drifted"] == ["x"], report["parameters"]
    assert report["parameters"]["x"]["p_value"] < 1e-6
    # 3. colour's mix changes (red 50% → 85%), the numbers as in the reference: drift on colour alone
    rng = random.Random(3)  # noqa: S311  # test data
    mixed = [{**b, "colour": "red" if rng.random() < 0.85 else "green"} for b in reordered(ref, 3)]
    send(svc, mixed)
    wait_logged(svc, 4 * N)
    report = monitor(*flags)
    assert report["drifted"] == ["colour"], report["parameters"]


def test_accuracy_and_error_from_feedback(scored: Any) -> None:
    svc, url, _ = scored
    bodies = [{"x": float(i - 50), "features": [0.0, 0.0]} for i in range(100)]
    ids = send(svc, bodies)
    # label is "pos" for x > 0 (49 of them); the truth says "pos" for x >= 0 (50): 99 of 100 agree
    for body, pid in zip(bodies, ids, strict=True):
        truth = {"label": "pos" if body["x"] >= 0 else "neg", "score": body["x"] + 0.5}
        assert svc.post("/feedback", {"prediction_id": pid, "truth": truth}).status_code == 204
    report = monitor("--log", url, "--reference", f"first:{N}", "--window", "100")
    assert report["performance"]["label"] == {"metric": "accuracy", "value": 0.99, "n": 100}
    assert report["performance"]["score"] == {"metric": "mae", "value": 0.5, "n": 100}
    assert "shade" not in report["performance"]  # no feedback on it


def test_report_page_and_gauges(scored: Any) -> None:
    _, url, _ = scored
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nb2svc.cli",
            "monitor",
            "--log",
            url,
            "--reference",
            f"first:{N}",
            "--window",
            str(N),
            "--port",
            str(port),
            "--every",
            "1s",
        ],
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"{base}/report", timeout=5)
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "the monitor never reported"
            time.sleep(0.2)
        report = r.json()
        metrics = httpx.get(f"{base}/metrics").text
        for name, d in report["parameters"].items():
            assert (
                f'nb2svc_monitor_drift{{parameter="{name}",test="{d["test"]}"}} {1.0 if d["drift"] else 0.0}' in metrics
            )
        assert "nb2svc_monitor_window 300.0" in metrics
        page = httpx.get(f"{base}/report.html")
        assert page.headers["content-type"].startswith("text/html")
        assert page.text.count("<svg") == 2 * len(report["parameters"])
        negotiated = httpx.get(f"{base}/report", headers={"accept": "text/html"})
        assert negotiated.text.startswith("<!doctype html>")
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


TRAINER = """\
runs_file = "unused"
"""


def write_trainer(folder: Path) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["nb2svc"] = {"kind": "training"}
    nb.cells = [
        new_code_cell("epochs: int = 1", metadata={"tags": ["parameters"]}),
        new_code_cell("trained_for: int = epochs", metadata={"tags": ["outputs"]}),
    ]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"trainer-{i}"
    path = folder / "trainer.ipynb"
    nbformat.write(nb, path)
    return path


def test_the_retrain_rule_starts_one_run_per_cooldown(scored: Any, serve: Any, tmp_path: Path) -> None:
    _, url, _ = scored  # its window drifts on colour (test_drift_per_parameter_by_its_type)
    trainer = serve(write_trainer(tmp_path), {"NB2SVC_RUNS_DIR": str(tmp_path / "runs")})
    config = tmp_path / "nb2svc.yaml"
    config.write_text(
        "monitor:\n"
        f"  log: {url}\n"
        f"  reference: first:{N}\n"
        f"  window: {N}\n"
        "  retrain:\n"
        "    when: drift\n"
        f"    training: {trainer.url}\n"
        "    parameters: {epochs: 3}\n"
        "    cooldown: 1h\n"
    )
    dry = monitor("--dry-run", config=config)
    assert dry["retrain"]["action"] == "would_start" and dry["retrain"]["triggered"]
    assert trainer.http.get("/runs").json() == []
    first = monitor(config=config)  # a process of its own: the cooldown lives in the log, not in the monitor
    assert first["retrain"]["action"] == "trained", first["retrain"]
    assert first["retrain"]["outputs"] == {"trained_for": 3}
    second = monitor(config=config)
    assert second["retrain"]["action"] == "cooldown" and second["retrain"]["last"]["run"] == first["retrain"]["run"]
    runs = trainer.http.get("/runs").json()
    assert [r["id"] for r in runs] == [first["retrain"]["run"]]


def test_monitor_reads_a_postgresql_log_of_two_replicas(serve: Any, tmp_path: Path, postgres: Postgres) -> None:
    scorer = write_scorer(tmp_path)
    log = postgres.database("monitor_replicas")
    env = {"NB2SVC_LOG_URL": log}
    a = serve(scorer, {**env, "NB2SVC_INSTANCE": "a"})
    b = serve(scorer, {**env, "NB2SVC_INSTANCE": "b"})
    ref = reference_bodies()[:100]
    send(a, ref[:50])
    send(b, ref[50:])
    shifted = [{**x, "x": x["x"] + 3.0} for x in reordered(ref, 5)]
    send(a, shifted[:50])
    send(b, shifted[50:])
    wait_logged(a, 100)
    wait_logged(b, 100)
    report = monitor("--log", log, "--name", "scorer", "--reference", "first:100", "--window", "100")
    assert report["window"] == 100 and "x" in report["drifted"]
