"""A training notebook behind a real `nb2svc serve`: runs through papermill, kept on disk."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest

from .conftest import NOTEBOOKS, Service, conforms

pytestmark = pytest.mark.slow


@pytest.fixture
def training(serve: Callable[..., Service], tmp_path: Path) -> Callable[..., Service]:
    def start(**env: str) -> Service:
        return serve(NOTEBOOKS / "training.ipynb", {"NB2SVC_RUNS_DIR": str(tmp_path / "runs"), **env})

    return start


def wait_done(svc: Service, run_id: str, seconds: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run: dict[str, Any] = svc.http.get(f"/runs/{run_id}").json()
        if run["status"] not in {"queued", "running"}:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish")


def test_a_run_keeps_outputs_notebook_and_artifacts(training: Callable[..., Service]) -> None:
    svc = training()
    openapi = svc.http.get("/openapi.json").json()
    r = svc.post("/runs", {"steps": 4, "message": "hi"})
    assert r.status_code == 202
    conforms(openapi, "/runs", "post", r)
    assert set(r.json()) >= {"id", "status", "links"} and r.headers["location"] == f"/runs/{r.json()['id']}"
    run = wait_done(svc, r.json()["id"])
    assert run["status"] == "succeeded", run
    assert run["outputs"]["loss"] == 0.25 and run["outputs"]["echoed"] == "hi"
    # $NB2SVC_ARTIFACTS is set before the notebook's first cell, not only after the parameters
    assert run["outputs"]["artifacts_at_start"].endswith(f"{run['id']}/artifacts")
    assert run["parameters"] == {"steps": 4, "message": "hi"}
    assert run["artifacts"] == ["model.json"]
    conforms(openapi, "/runs/{id}", "get", svc.http.get(f"/runs/{run['id']}"))

    artifact = svc.http.get(f"/runs/{run['id']}/artifacts/model.json")
    assert artifact.status_code == 200 and json.loads(artifact.content) == {"steps": 4, "message": "hi"}

    notebook = svc.http.get(run["links"]["notebook"])
    assert notebook.headers["content-type"].startswith("application/x-ipynb+json")
    nb = nbformat.reads(notebook.text, as_version=4)
    nbformat.validate(nb)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert ["injected-parameters"] in tags
    assert nb.metadata.papermill.parameters == {"steps": 4, "message": "hi"}
    assert all("start_time" in c.metadata.papermill for c in nb.cells if c.cell_type == "code")


def test_wait_answers_with_the_finished_run(training: Callable[..., Service]) -> None:
    svc = training()
    r = svc.post("/runs?wait=60", {"steps": 2})
    assert r.status_code == 200 and r.json()["status"] == "succeeded"
    assert r.json()["outputs"]["loss"] == 0.5
    bad = svc.post("/runs?wait=soon", {})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "wait"]


def test_invalid_parameters_never_start_a_run(training: Callable[..., Service]) -> None:
    svc = training()
    r = svc.post("/runs", {"steps": "many", "extra": 1})
    assert r.status_code == 422
    assert {d["field"] for d in r.json()["detail"]} == {"steps", "extra"}
    assert svc.http.get("/runs").json() == []


def test_a_failing_run_names_the_cell(training: Callable[..., Service]) -> None:
    svc = training()
    run = svc.post("/runs?wait=60", {"fail": True}).json()
    assert run["status"] == "failed"
    assert (run["error"]["cell"], run["error"]["ename"], run["error"]["evalue"]) == (3, "RuntimeError", "asked to fail")
    assert svc.http.get(run["links"]["notebook"]).status_code == 200  # kept, to see where it stopped
    assert svc.post("/runs?wait=60", {}).json()["status"] == "succeeded"  # the service goes on


@pytest.mark.parametrize(("kind", "says"), [("nan", "Out of range float values"), ("object", "no JSON form")])
def test_outputs_without_a_json_form_are_an_output_error(
    training: Callable[..., Service], kind: str, says: str
) -> None:
    svc = training()
    run = svc.post("/runs?wait=60", {"loss_kind": kind}).json()
    assert run["status"] == "failed"
    assert run["error"]["error"] == "output_error" and says in run["error"]["message"]


def test_a_string_holding_code_stays_data(training: Callable[..., Service], tmp_path: Path) -> None:
    svc = training()
    marker = tmp_path / "pwned"
    payload = f'"\nimport os; os.system("touch {marker}")\n"'
    run = svc.post("/runs?wait=60", {"message": payload}).json()
    assert run["outputs"]["echoed"] == payload
    assert not marker.exists()


def test_cancel_a_running_and_a_queued_run(training: Callable[..., Service]) -> None:
    svc = training()
    running = svc.post("/runs", {"sleep": 30}).json()
    queued = svc.post("/runs", {"sleep": 30}).json()
    for _ in range(100):
        if svc.http.get(f"/runs/{running['id']}").json()["status"] == "running":
            break
        time.sleep(0.1)
    assert svc.http.get(f"/runs/{queued['id']}").json()["status"] == "queued"  # one run at a time by default
    r = svc.http.delete(f"/runs/{queued['id']}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    started = time.monotonic()
    r = svc.http.delete(f"/runs/{running['id']}")
    assert r.json()["status"] == "cancelled" and time.monotonic() - started < 10
    again = svc.http.delete(f"/runs/{running['id']}")
    assert (again.status_code, again.json()["error"]) == (409, "already_finished")
    assert svc.post("/runs?wait=60", {}).json()["status"] == "succeeded"


def test_a_run_past_its_timeout_fails(training: Callable[..., Service]) -> None:
    svc = training(NB2SVC_TIMEOUT="3")
    run = svc.post("/runs?wait=30", {"sleep": 30}).json()
    assert run["status"] == "failed" and run["error"]["error"] == "timeout"


def test_unknown_runs_and_artifacts_are_404(training: Callable[..., Service]) -> None:
    svc = training()
    assert svc.http.get("/runs/nope").status_code == 404
    run = svc.post("/runs?wait=60", {}).json()
    for path in ["missing.bin", "../run.json", "..%2Frun.json", "%2E%2E/parameters.json"]:
        r = svc.http.get(f"/runs/{run['id']}/artifacts/{path}")
        assert r.status_code == 404, path
        assert r.json()["error"] == "not_found"


def test_a_restart_keeps_finished_runs(training: Callable[..., Service]) -> None:
    first = training()
    done = first.post("/runs?wait=60", {"steps": 5}).json()
    interrupted = first.post("/runs", {"sleep": 30}).json()
    queued = first.post("/runs", {"steps": 8}).json()
    while first.http.get(f"/runs/{interrupted['id']}").json()["status"] != "running":
        time.sleep(0.1)
    first.stop()

    second = training()
    kept = second.http.get(f"/runs/{done['id']}").json()
    assert kept["status"] == "succeeded" and kept["outputs"]["loss"] == 0.2
    assert second.http.get(f"/runs/{done['id']}/artifacts/model.json").status_code == 200
    assert second.http.get(f"/runs/{done['id']}/notebook").status_code == 200
    lost = second.http.get(f"/runs/{interrupted['id']}").json()
    assert lost["status"] in {"failed", "cancelled"}  # never left "running" forever
    assert wait_done(second, queued["id"])["outputs"]["loss"] == 0.125  # a queued run still runs


def test_metrics_count_runs_by_status(training: Callable[..., Service]) -> None:
    svc = training()
    svc.post("/runs?wait=60", {})
    svc.post("/runs?wait=60", {"fail": True})
    text = svc.http.get("/metrics").text
    assert 'nb2svc_runs{status="succeeded"} 1.0' in text
    assert 'nb2svc_runs{status="failed"} 1.0' in text


def test_a_runs_folder_it_cannot_write_fails_health_not_the_first_run(
    serve: Callable[..., Service], tmp_path: Path
) -> None:
    """A mount the image's user can't write (here: a folder under a file, which even root can't make)."""
    (tmp_path / "a-file").write_text("")
    runs = tmp_path / "a-file" / "runs"
    svc = serve(NOTEBOOKS / "training.ipynb", {"NB2SVC_RUNS_DIR": str(runs)}, wait_for=(503,))
    health = svc.http.get("/health").json()
    assert health["status"] == "failed" and health["error"]["error"] == "runs_dir_unwritable"
    assert str(runs) in health["error"]["message"] and "NB2SVC_RUNS_DIR" in health["error"]["hint"]
    r = svc.post("/runs", {"steps": 1})
    assert r.status_code == 503 and r.json()["cause"]["error"] == "runs_dir_unwritable"
    assert svc.http.get("/runs").json() == []  # nothing to list, and no crash listing it
