"""A training notebook behind a real `nb2svc serve`: runs through papermill, kept on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    r = svc.post(f"/runs/{queued['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    started = time.monotonic()
    r = svc.post(f"/runs/{running['id']}/cancel")
    assert r.json()["status"] == "cancelled" and time.monotonic() - started < 10
    again = svc.post(f"/runs/{running['id']}/cancel")
    assert (again.status_code, again.json()["error"]) == (409, "already_finished")
    conforms(svc.http.get("/openapi.json").json(), "/runs/{id}/cancel", "post", again)
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


def strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity (which Python's json accepts) are refused."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def wait_status(svc: Service, run_id: str, status: str) -> None:
    for _ in range(600):
        if svc.http.get(f"/runs/{run_id}").json()["status"] == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} never became {status}")


def test_a_run_whose_record_cannot_be_saved_fails_and_the_queue_goes_on(
    training: Callable[..., Service], capfd: pytest.CaptureFixture[str]
) -> None:
    """The notebook deletes its own run folder (as a full disk would stop the writes): issue 8, defect 2."""
    svc = training()
    asked = time.monotonic()
    gone = svc.post("/runs?wait=30", {"remove_run": True}).json()
    # answered as it failed, not when its 30 s ran out (the waiter was never woken before the fix)
    assert gone["status"] == "failed" and time.monotonic() - asked < 20, gone
    nxt = svc.post("/runs?wait=60", {"steps": 2}).json()
    assert nxt["status"] == "succeeded", nxt  # the queue did not stall
    gone = svc.http.get(f"/runs/{gone['id']}").json()  # kept in memory, failed, saying why
    assert gone["status"] == "failed" and "could not be saved" in gone["error"]["message"], gone
    assert gone["id"] in capfd.readouterr().err  # and the log says which run failed to save


def test_a_cancel_before_the_kernel_is_ready_is_kept(training: Callable[..., Service]) -> None:
    """With no warm kernel, the worker waits for a fresh one; a cancel meanwhile must stick (defect 3)."""
    svc = training(NB2SVC_WARM_KERNELS="0")
    for _ in range(3):
        run = svc.post("/runs", {"steps": 2}).json()
        r = svc.post(f"/runs/{run['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        after = svc.post("/runs?wait=60", {}).json()  # runs after the cancelled one: that one is settled
        assert after["status"] == "succeeded"
        kept = svc.http.get(f"/runs/{run['id']}").json()
        assert (kept["status"], kept["outputs"]) == ("cancelled", None)


def test_cancelled_queued_runs_free_their_queue_places(training: Callable[..., Service]) -> None:
    svc = training(NB2SVC_MAX_QUEUE="3")
    running = svc.post("/runs", {"sleep": 30}).json()
    wait_status(svc, running["id"], "running")
    queued = [svc.post("/runs", {}).json() for _ in range(3)]
    full = svc.post("/runs", {})
    assert (full.status_code, full.json()["error"]) == (503, "queue_full")
    for run in queued:
        assert svc.post(f"/runs/{run['id']}/cancel").json()["status"] == "cancelled"
    assert svc.post("/runs", {}).status_code == 202  # defect 8: cancelled runs kept their places
    svc.post(f"/runs/{running['id']}/cancel")


def test_a_failing_cell_is_named_as_the_user_numbers_it(
    serve: Callable[..., Service], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """papermill drops its error-marker cells before it runs (defect 12); the kernelspec names a conda env
    that is not installed here, and the service runs it on its own Python kernel (defect 13)."""
    svc = serve(NOTEBOOKS / "broken_markers.ipynb", {"NB2SVC_RUNS_DIR": str(tmp_path / "runs")})
    failed = svc.post("/runs?wait=60", {}).json()
    assert failed["status"] == "failed", failed
    assert (failed["error"]["cell"], failed["error"]["ename"]) == (7, "AssertionError")
    assert failed["error"]["message"].startswith("cell 7 raised AssertionError")
    magic = svc.post("/runs?wait=60", {"mode": "magic"}).json()["error"]
    assert (magic["cell"], magic["ename"]) == (7, "UsageError") and "no_such_magic" in magic["evalue"]
    assert svc.post("/runs?wait=60", {"mode": "ok"}).json()["status"] == "succeeded"
    log = capfd.readouterr().err
    assert "No such kernel" not in log and "without encryption" not in log


def test_the_executed_notebook_reruns_anywhere_with_the_values_it_ran_with(
    training: Callable[..., Service], tmp_path: Path
) -> None:
    """Defect 16: no server paths in it; the injected cell holds the values as literals."""
    svc = training()
    message = 'it\'s "quoted"\nand two lines'
    run = svc.post("/runs?wait=60", {"steps": 4, "message": message}).json()
    assert run["status"] == "succeeded", run
    text = svc.http.get(run["links"]["notebook"]).text
    nb = nbformat.reads(text, as_version=4)
    assert not [c.source for c in nb.cells if str(tmp_path / "runs") in c.source]  # no server path in any cell
    (injected,) = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert "steps = 4" in injected.source.splitlines()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "run.ipynb").write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "NB2SVC_ARTIFACTS"}
    done = subprocess.run(
        [sys.executable, "-m", "papermill", "run.ipynb", "out.ipynb"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((elsewhere / "artifacts" / "model.json").read_text()) == {"steps": 4, "message": message}


def test_a_record_holding_nan_from_an_older_version_is_left_out(
    training: Callable[..., Service], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Defect 7: NaN is not JSON and fits no schema; the record is logged and left out, the rest lists."""
    old = tmp_path / "runs" / "0123456789abcdef"
    old.mkdir(parents=True)
    (old / "run.json").write_text(
        '{"id": "0123456789abcdef", "status": "succeeded", "parameters": {"sleep": NaN}, '
        '"created_at": "2026-01-01T00:00:00.000Z", "outputs": {"loss": Infinity}, "artifacts": []}'
    )
    svc = training()
    run = svc.post("/runs?wait=60", {}).json()
    listed = svc.http.get("/runs")
    assert [r["id"] for r in strict_json(listed.text)] == [run["id"]]
    conforms(svc.http.get("/openapi.json").json(), "/runs", "get", listed)
    assert svc.http.get("/runs/0123456789abcdef").status_code == 404
    assert f"{old / 'run.json'} is left out: it holds NaN" in capfd.readouterr().err
    assert strict_json((tmp_path / "runs" / run["id"] / "run.json").read_text())["status"] == "succeeded"


def test_a_run_names_the_instance_that_ran_it(training: Callable[..., Service]) -> None:
    svc = training(NB2SVC_INSTANCE="trainer-7")
    run = svc.post("/runs?wait=60", {}).json()
    assert run["instance"] == "trainer-7"
    assert "instance" in svc.http.get("/openapi.json").json()["components"]["schemas"]["Run"]["properties"]


def test_wait_is_bounded_as_the_openapi_document_says(training: Callable[..., Service]) -> None:
    svc = training()
    openapi = svc.http.get("/openapi.json").json()
    (wait,) = [p for p in openapi["paths"]["/runs"]["post"]["parameters"] if p["name"] == "wait"]
    assert (wait["schema"]["minimum"], wait["schema"]["maximum"]) == (0, 86400)
    for bad in ("86401", "-1", "nan"):
        r = svc.post(f"/runs?wait={bad}", {})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "wait"], bad
        conforms(openapi, "/runs", "post", r)
    assert svc.http.get("/runs").json() == []  # a refused wait starts no run


def test_the_notebook_of_a_run_not_started_is_a_409(training: Callable[..., Service]) -> None:
    svc = training()
    openapi = svc.http.get("/openapi.json").json()
    running = svc.post("/runs", {"sleep": 30}).json()
    queued = svc.post("/runs", {}).json()
    r = svc.http.get(f"/runs/{queued['id']}/notebook")
    assert (r.status_code, r.json()["error"]) == (409, "not_started") and "has not started" in r.json()["message"]
    conforms(openapi, "/runs/{id}/notebook", "get", r)
    assert svc.http.get("/runs/nope/notebook").status_code == 404
    svc.post(f"/runs/{running['id']}/cancel")


def test_delete_cancels_and_removes_the_run_and_its_files(training: Callable[..., Service], tmp_path: Path) -> None:
    svc = training()
    openapi = svc.http.get("/openapi.json").json()
    done = svc.post("/runs?wait=60", {}).json()
    running = svc.post("/runs", {"sleep": 30}).json()
    wait_status(svc, running["id"], "running")
    for run, final in ((done, "succeeded"), (running, "cancelled")):
        r = svc.http.delete(f"/runs/{run['id']}")
        assert (r.status_code, r.json()["status"]) == (200, final)
        conforms(openapi, "/runs/{id}", "delete", r)
        assert svc.http.get(f"/runs/{run['id']}").status_code == 404
        assert not (tmp_path / "runs" / run["id"]).exists()
        again = svc.http.delete(f"/runs/{run['id']}")
        assert again.status_code == 404
        conforms(openapi, "/runs/{id}", "delete", again)
    assert svc.http.get("/runs").json() == []
    assert svc.post("/runs?wait=60", {}).json()["status"] == "succeeded"


def test_runs_are_listed_in_pages_newest_first(training: Callable[..., Service]) -> None:
    svc = training()
    openapi = svc.http.get("/openapi.json").json()
    ids = [svc.post("/runs?wait=60", {"steps": n}).json()["id"] for n in (1, 2, 3)]
    first = svc.http.get("/runs?limit=2")
    conforms(openapi, "/runs", "get", first)
    assert [r["id"] for r in first.json()] == ids[:0:-1]
    assert first.links["next"]["url"]
    second = svc.http.get(first.links["next"]["url"])
    assert [r["id"] for r in second.json()] == ids[:1] and "next" not in second.links
    assert [r["id"] for r in svc.http.get("/runs").json()] == ids[::-1]  # the default page holds them all
    for bad in ("limit=0", "limit=1001", "limit=many", "cursor=not-a-cursor"):
        r = svc.http.get(f"/runs?{bad}")
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "query", bad
        conforms(openapi, "/runs", "get", r)


def test_runs_leave_no_open_descriptors_behind(training: Callable[..., Service]) -> None:
    """Each run's kernel client is closed with the run: open, its sockets and ZMQ context (13-17 descriptors a run)
    stayed until a full garbage collection, which a busy service may not see for a long time."""
    svc = training()
    assert svc.proc is not None
    fds = Path(f"/proc/{svc.proc.pid}/fd")
    assert svc.post("/runs?wait=60", {}).json()["status"] == "succeeded"  # the first run: imports, pools filled
    time.sleep(1)
    before = len(list(fds.iterdir()))
    for _ in range(8):
        assert svc.post("/runs?wait=60", {}).json()["status"] == "succeeded"
    time.sleep(1)  # the ended runs' kernels shut down off the queue's path
    grown = len(list(fds.iterdir())) - before
    assert grown < 16, f"{grown} more descriptors open after 8 runs"
