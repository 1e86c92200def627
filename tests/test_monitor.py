"""`nb2svc monitor` over a real service's prediction log: drift per typed parameter, accuracy from feedback,
its /report and /metrics, and the retrain rule against a real training service (SPEC section 8)."""

from __future__ import annotations

import json
import os
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


# --- retraining rolled out on the local swarm -------------------------------------------------------------------

SERVING_MODEL = """\
import json
import os

MODEL = json.load(open(os.environ.get("MODEL_FILE", "/srv/nb2svc/artifacts/model/model.json")))"""


def write_model_notebooks(folder: Path) -> tuple[Path, Path]:
    """A training notebook that writes model.json ({"version"}), and a serving one that answers its version."""
    folder.mkdir(parents=True, exist_ok=True)
    train = new_notebook()
    train.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    train.metadata["nb2svc"] = {"kind": "training"}
    train.cells = [
        new_code_cell("import json, os\nfrom pathlib import Path"),
        new_code_cell('version: str = "v1"', metadata={"tags": ["parameters"]}),
        new_code_cell(
            'out = Path(os.environ.get("NB2SVC_ARTIFACTS", "artifacts"))\nout.mkdir(parents=True, exist_ok=True)\n'
            '(out / "model.json").write_text(json.dumps({"version": version}))'
        ),
        new_code_cell("trained: str = version", metadata={"tags": ["outputs"]}),
    ]
    serve_nb = new_notebook()
    serve_nb.metadata["kernelspec"] = train.metadata["kernelspec"]
    serve_nb.cells = [
        new_code_cell(SERVING_MODEL),
        new_code_cell("x: float = 0.0", metadata={"tags": ["parameters"]}),
        new_code_cell('version: str = MODEL["version"]', metadata={"tags": ["outputs"]}),
    ]
    paths = folder / "trainer_model.ipynb", folder / "answer_model.ipynb"
    for nb, path in zip((train, serve_nb), paths, strict=True):
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{path.stem}-{i}"
        nbformat.write(nb, path)
    return paths


@pytest.mark.docker
def test_retraining_rolls_the_new_model_out_on_the_swarm(client: Any, serve: Any, tmp_path: Path) -> None:
    import uuid

    from nb2svc import inspect_notebook
    from nb2svc.build import build, push
    from nb2svc.deploy.catalog import read_image
    from nb2svc.deploy.engine import DeployOptions, engine
    from nb2svc.render import Artifact, BuildOptions, render

    from .conftest import BASE

    run = uuid.uuid4().hex[:8]
    name, repo = f"nb2svc-mon-{run}", f"127.0.0.1:5000/nb2svc-monitor-test/{run}/answer_model"
    swarm = {
        "NB2SVC_SWARM_HEALTH_INTERVAL": "1",
        "NB2SVC_SWARM_START_PERIOD": "90",
        "NB2SVC_SWARM_MONITOR": "2",
        "NB2SVC_SWARM_STOP_GRACE": "5",
        "NB2SVC_SWARM_TIMEOUT": "240",
    }
    trainer_nb, answer_nb = write_model_notebooks(tmp_path / "nb")
    # v1: built by hand with a model file of its own, deployed as a user would
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "model.json").write_text('{"version": "v1"}')
    options = BuildOptions(
        backend="openfaas",
        base=BASE,
        artifacts=(Artifact(tmp_path / "v1", "/srv/nb2svc/artifacts/model"),),
        env=(("NB2SVC_WORKERS", "0"),),
    )
    v1 = f"{repo}:v1"
    build(render(inspect_notebook(answer_nb), tmp_path / "ctx", options, v1), v1, client=client)
    push(v1, client=client)
    for k, v in swarm.items():
        os.environ[k] = v  # the engine reads its settings from the environment; restored below
    swarm_engine = engine("swarm")
    try:
        deployed = swarm_engine.deploy(name, read_image(v1), DeployOptions(replicas=1))
        assert deployed.url is not None
        assert httpx.post(f"{deployed.url}/invoke", json={}, timeout=30).json() == {"version": "v1"}
        # a drifting log, a training service, and the rule with deploy:
        log = f"sqlite:///{tmp_path / 'log.sqlite'}"
        scorer = serve(write_scorer(tmp_path), {"NB2SVC_LOG_URL": log})
        ref = reference_bodies()[:60]
        send(scorer, ref)
        send(scorer, [{**b, "x": b["x"] + 3.0} for b in ref])
        wait_logged(scorer, 120)
        trainer = serve(trainer_nb, {"NB2SVC_RUNS_DIR": str(tmp_path / "runs")})
        config = tmp_path / "monitor.yaml"
        config.write_text(
            f"monitor:\n  log: {log}\n  reference: first:60\n  window: 60\n  retrain:\n    when: drift\n"
            f"    training: {trainer.url}\n    parameters: {{version: v2}}\n    cooldown: 1h\n"
            f"    deploy:\n      name: {name}\n      notebook: {answer_nb}\n      image: {repo}\n"
            f"      base: {BASE}\n      backend: openfaas\n      env: {{NB2SVC_WORKERS: '0'}}\n"
        )
        report = monitor(config=config)
        outcome = report["retrain"]
        assert outcome["action"] == "deployed", outcome
        assert outcome["image"] == f"{repo}:retrain-{outcome['run']}"
        now = swarm_engine.get(name)
        assert (now.image, now.previous) == (outcome["image"], v1)
        assert httpx.post(f"{now.url}/invoke", json={}, timeout=30).json() == {"version": "v2"}
    finally:
        for k in swarm:
            os.environ.pop(k, None)
        try:
            swarm_engine.destroy(name)
        except Exception:  # noqa: S110  # never deployed
            pass
        for image in client.images.list(name=repo):
            client.images.remove(image.id, force=True)
