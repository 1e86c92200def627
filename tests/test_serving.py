"""A serving notebook behind a real `nb2svc serve` process: the HTTP contract of SPEC section 2."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from nb2svc import inspect_notebook, openapi_document

from .conftest import NOTEBOOKS, Service, conforms, reads_the_body_as_json_whatever_its_content_type

pytestmark = pytest.mark.slow

FEATURES = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def svc() -> Any:
    service = Service(NOTEBOOKS / "all_types.ipynb", {"NB2SVC_WORKERS": "2", "NB2SVC_MAX_BODY": "20000"})
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def openapi(svc: Service) -> dict[str, Any]:
    doc: dict[str, Any] = svc.http.get("/openapi.json").json()
    return doc


def test_openapi_json_is_the_compiled_document(svc: Service, openapi: dict[str, Any]) -> None:
    assert openapi == json.loads(json.dumps(openapi_document(inspect_notebook(NOTEBOOKS / "all_types.ipynb"))))


def test_round_trip_of_every_type(svc: Service, openapi: dict[str, Any]) -> None:
    body = {
        "epochs": 2,
        "lr": 1,  # an integer is a valid float and arrives as 1.0
        "optimizer": "sgd",
        "layers": [8, 4, 2],
        "features": [1, 2.5],
        "note": "hello",
        "weights": {"w": 2},
        "verbose": True,
        "tag": "v2",
        "sizes": [],
        "limit": None,
    }
    r = svc.post("/invoke", body)
    assert r.status_code == 200, r.text
    conforms(openapi, "/invoke", "post", r)
    out = r.json()
    assert out["echo"] == {**body, "lr": 1.0, "features": [1.0, 2.5], "weights": {"w": 2.0}}
    assert isinstance(out["echo"]["lr"], float)
    assert out["total"] == 7.0


def test_omitted_parameters_take_the_notebook_defaults(svc: Service) -> None:
    out = svc.post("/invoke", {"features": FEATURES}).json()
    assert out["echo"]["epochs"] == 5 and out["echo"]["optimizer"] == "adam" and out["echo"]["note"] is None


def _detail(r: Any) -> dict[str, dict[str, Any]]:
    return {d["field"]: d for d in r.json()["detail"]}


@pytest.mark.parametrize(
    ("body", "field", "kind", "loc"),
    [
        ({"features": FEATURES, "epochs": "5"}, "epochs", "invalid", ["body", "epochs"]),
        ({"features": FEATURES, "epochs": 1.5}, "epochs", "invalid", ["body", "epochs"]),
        ({"features": FEATURES, "verbose": 1}, "verbose", "invalid", ["body", "verbose"]),
        ({"features": FEATURES, "optimizer": "adamw"}, "optimizer", "invalid", ["body", "optimizer"]),
        ({"features": [1, "two"]}, "features", "invalid", ["body", "features", 1]),
        ({"features": FEATURES, "weights": {"a": "x"}}, "weights", "invalid", ["body", "weights", "a"]),
        ({"features": FEATURES, "note": 3}, "note", "invalid", ["body", "note"]),
        ({"features": FEATURES, "bogus": 1}, "bogus", "extra_forbidden", ["body", "bogus"]),
        ({"epochs": 3}, "features", "missing", ["body", "features"]),
    ],
)
def test_invalid_input_is_a_422_naming_the_field(
    svc: Service, openapi: dict[str, Any], body: dict[str, Any], field: str, kind: str, loc: list[Any]
) -> None:
    r = svc.post("/invoke", body)
    assert r.status_code == 422, r.text
    conforms(openapi, "/invoke", "post", r)
    assert r.json()["error"] == "validation_error"
    item = _detail(r)[field]
    assert (item["type"], item["loc"]) == (kind, loc)
    assert field in r.json()["message"]


def test_every_bad_field_is_named_at_once(svc: Service) -> None:
    r = svc.post("/invoke", {"epochs": "x", "lr": "y", "zzz": 1})
    assert r.status_code == 422
    assert set(_detail(r)) == {"epochs", "lr", "zzz", "features"}
    assert _detail(r)["epochs"]["expected"] == "integer"


@pytest.mark.parametrize(
    ("content", "status", "error"),
    [
        (b'{"features": [1,', 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b"[1, 2]", 422, "validation_error"),
        (b'"text"', 422, "validation_error"),
        (b"x" * 30000, 413, "body_too_large"),
    ],
)
def test_malformed_and_oversized_bodies(
    svc: Service, openapi: dict[str, Any], content: bytes, status: int, error: str
) -> None:
    r = svc.http.post("/invoke", content=content, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]) == (status, error)
    conforms(openapi, "/invoke", "post", r)


def test_oversized_chunked_body_without_content_length(svc: Service) -> None:
    def chunks() -> Any:
        for _ in range(10):
            yield b" " * 4000

    r = svc.http.post("/invoke", content=chunks())
    assert r.status_code == 413


def test_a_string_holding_code_stays_data(svc: Service, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        f'"; import os; os.system("touch {marker}"); x = "',
        f"'''\nimport os; os.system('touch {marker}')\n'''",
        f"\\\"; __import__('os').system('touch {marker}') #",
        "{__import__('os').getpid()}",
    ]
    for payload in payloads:
        r = svc.post("/invoke", {"features": FEATURES, "tag": payload, "note": payload})
        assert r.status_code == 200
        assert r.json()["echo"]["tag"] == payload
        assert r.json()["echo"]["note"] == payload
    assert not marker.exists()


def test_setup_runs_once_per_worker(svc: Service) -> None:
    answers = [svc.post("/invoke", {"features": FEATURES}).json() for _ in range(6)]
    assert {a["setup_count"] for a in answers} == {1}
    assert len({a["pid"] for a in answers}) <= 2  # two workers, each set up once


def test_concurrent_requests_each_get_their_own_answer(svc: Service) -> None:
    def one(i: int) -> tuple[int, Any]:
        r = svc.http.post("/invoke", json={"features": [float(i)], "epochs": i + 1, "tag": f"req-{i}"})
        return i, r.json()

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    for i, out in results:
        assert out["echo"]["tag"] == f"req-{i}"
        assert out["total"] == float(i) * (i + 1)


def test_health_openapi_and_metrics(svc: Service, openapi: dict[str, Any]) -> None:
    health = svc.http.get("/health")
    assert health.json()["status"] == "ok"
    conforms(openapi, "/health", "get", health)
    svc.post("/invoke", {"epochs": "bad"})
    metrics = svc.http.get("/metrics")
    assert metrics.status_code == 200
    assert 'nb2svc_requests_total{method="POST",route="/invoke",status="422"}' in metrics.text
    assert "nb2svc_request_duration_seconds_bucket" in metrics.text
    assert 'nb2svc_errors_total{error="validation_error"}' in metrics.text


def test_unknown_routes_and_methods_answer_json(svc: Service) -> None:
    r = svc.http.get("/nowhere")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = svc.http.get("/invoke")
    assert (r.status_code, r.json()["error"]) == (405, "method_not_allowed")


@pytest.fixture(scope="module")
def bad() -> Any:
    service = Service(NOTEBOOKS / "misbehaves.ipynb", {"NB2SVC_TIMEOUT": "2"})
    service.start()
    yield service
    service.stop()


def test_a_raising_cell_is_a_500_naming_the_cell_and_the_service_goes_on(serve: Callable[..., Service]) -> None:
    svc = serve(NOTEBOOKS / "raises.ipynb")
    r = svc.post("/invoke", {"x": -4})
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "notebook_error"
    assert (body["cell"], body["ename"], body["evalue"]) == (3, "ValueError", "x must not be negative, got -4.0")
    assert "traceback" not in body
    conforms(svc.http.get("/openapi.json").json(), "/invoke", "post", r)
    assert svc.post("/invoke", {"x": 16}).json() == {"y": 4.0}


def test_debug_shows_the_traceback(serve: Callable[..., Service]) -> None:
    svc = serve(NOTEBOOKS / "raises.ipynb", {"NB2SVC_DEBUG": "1"})
    body = svc.post("/invoke", {"x": -1}).json()
    assert any("ValueError" in line for line in body["traceback"])
    assert any("<cell 3>" in line for line in body["traceback"])


def test_a_crashing_worker_is_replaced(bad: Service) -> None:
    r = bad.post("/invoke", {"mode": "crash"})
    assert (r.status_code, r.json()["error"]) == (500, "worker_died")
    assert "exited with code 3" in r.json()["message"]
    for _ in range(100):  # the replacement runs setup; requests queue for it meanwhile
        r = bad.post("/invoke", {"n": 7})
        if r.status_code == 200:
            break
        time.sleep(0.1)
    assert r.json() == {"value": 7.0, "previous": None}


def test_system_exit_in_a_cell_is_a_notebook_error(bad: Service) -> None:
    r = bad.post("/invoke", {"mode": "exit"})
    assert (r.status_code, r.json()["ename"]) == (500, "SystemExit")
    assert bad.post("/invoke", {"n": 1}).status_code == 200


def test_a_slow_request_times_out_with_504_and_the_worker_survives(bad: Service) -> None:
    r = bad.post("/invoke", {"mode": "sleep"})
    assert (r.status_code, r.json()["error"]) == (504, "timeout")
    assert bad.post("/invoke", {"n": 2}).json()["value"] == 2.0


def _at_once(svc: Service, *bodies: dict[str, Any], gap: float = 0.3) -> list[httpx.Response]:
    """POST each body on a connection of its own, ``gap`` seconds apart, and wait for every answer."""
    answers: list[httpx.Response | None] = [None] * len(bodies)

    def post(i: int) -> None:
        answers[i] = httpx.post(f"{svc.url}/invoke", json=bodies[i], timeout=60)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
        time.sleep(gap)
    for t in threads:
        t.join(90)
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None]


def test_a_request_waiting_behind_one_that_times_out_is_not_stopped_with_it(bad: Service) -> None:
    """The worker holds the next request in its pipe while one runs: the timeout stops the running one only."""
    slow, queued = _at_once(bad, {"mode": "sleep"}, {"n": 9})
    assert (slow.status_code, slow.json()["error"]) == (504, "timeout")
    assert (queued.status_code, queued.json()) == (200, {"value": 9.0, "previous": None})


def test_a_request_waiting_behind_one_that_kills_the_worker_runs_on_the_next_worker(bad: Service) -> None:
    assert bad.post("/invoke", {"n": 1}).status_code == 200  # a worker is up
    crash, queued = _at_once(bad, {"mode": "crash"}, {"n": 8}, gap=0.05)
    assert (crash.status_code, crash.json()["error"]) == (500, "worker_died")
    assert (queued.status_code, queued.json()) == (200, {"value": 8.0, "previous": None})


def test_a_sigint_the_server_did_not_send_stops_no_request(bad: Service) -> None:
    """A Ctrl-C in the server's terminal reaches its workers too: only the server's own timeout interrupts."""
    assert bad.proc is not None
    (worker,) = (int(c) for c in Path(f"/proc/{bad.proc.pid}/task/{bad.proc.pid}/children").read_text().split())
    box: list[httpx.Response] = []
    t = threading.Thread(target=lambda: box.append(bad.post("/invoke", {"mode": "sleep"})))
    t.start()
    time.sleep(0.5)
    os.kill(worker, signal.SIGINT)  # before the fix: KeyboardInterrupt, an immediate 504
    started = time.monotonic()
    t.join(30)
    assert (box[0].status_code, box[0].json()["error"]) == (504, "timeout")
    assert time.monotonic() - started > 1.0  # stopped at the 2 s timeout, not by the stray signal
    assert bad.post("/invoke", {"n": 3}).json()["value"] == 3.0


@pytest.mark.parametrize("mode", ["nan", "wrong_type"])
def test_outputs_that_break_their_declared_type_are_a_500(bad: Service, mode: str) -> None:
    r = bad.post("/invoke", {"mode": mode})
    assert (r.status_code, r.json()["error"]) == (500, "output_error")
    assert "value" in r.json()["message"]


def test_requests_do_not_see_each_others_values(bad: Service) -> None:
    assert bad.post("/invoke", {"mode": "remember", "n": 5}).json()["previous"] == 5
    assert bad.post("/invoke", {"n": 6}).json()["previous"] is None


def test_failed_setup_keeps_health_at_503_with_the_cause(serve: Callable[..., Service]) -> None:
    svc = serve(NOTEBOOKS / "setup_fails.ipynb", wait_for=(503,))
    for _ in range(100):
        health = svc.http.get("/health").json()
        if health["status"] == "failed":
            break
        time.sleep(0.1)
    assert health["error"]["cell"] == 1 and health["error"]["evalue"] == "model file missing"
    r = svc.post("/invoke", {})
    assert (r.status_code, r.json()["error"]) == (503, "not_ready")
    assert "setup failed" in r.json()["message"]


def test_workers_0_serves_in_the_servers_own_process(serve: Callable[..., Service]) -> None:
    """NB2SVC_WORKERS=0: the same contract, answered by the `nb2svc serve` process itself."""
    svc = serve(NOTEBOOKS / "all_types.ipynb", {"NB2SVC_WORKERS": "0"})
    answers = [svc.post("/invoke", {"features": FEATURES, "tag": f"t{i}"}) for i in range(3)]
    assert all(a.status_code == 200 for a in answers)
    assert {a.json()["pid"] for a in answers} == {svc.proc.pid}  # type: ignore[union-attr]
    assert {a.json()["setup_count"] for a in answers} == {1}
    assert [a.json()["echo"]["tag"] for a in answers] == ["t0", "t1", "t2"]
    bad = svc.post("/invoke", {"features": "x"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "features"
    raised = serve(NOTEBOOKS / "raises.ipynb", {"NB2SVC_WORKERS": "0"}).post("/invoke", {"x": -4})
    assert raised.status_code == 500 and raised.json()["cell"] == 3


def test_a_notebooks_own_input_check_is_a_422(serve: Callable[..., Service], tmp_path: Path) -> None:
    """`raise InvalidInput(message, field)` in a request cell: 422 naming the field; other errors stay 500."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook()
    nb.cells = [
        new_code_cell("from nb2svc import InvalidInput"),
        new_code_cell("x: int = 1  # a positive number", metadata={"tags": ["parameters"]}),
        new_code_cell(
            "if x < 0:\n    raise InvalidInput(f'x must be positive, got {x}', 'x')\n"
            "if x == 0:\n    raise InvalidInput('zero is not allowed here')\n"
            "if x == 13:\n    raise ValueError('unlucky')"
        ),
        new_code_cell("y: int = x * 2", metadata={"tags": ["outputs"]}),
    ]
    nbformat.write(nb, tmp_path / "checks.ipynb")
    svc = serve(tmp_path / "checks.ipynb")
    openapi = svc.http.get("/openapi.json").json()
    negative = svc.post("/invoke", {"x": -3})
    assert negative.status_code == 422
    assert negative.json()["message"] == "x must be positive, got -3"
    assert negative.json()["detail"] == [
        {"loc": ["body", "x"], "field": "x", "type": "invalid", "msg": "x must be positive, got -3"}
    ]
    conforms(openapi, "/invoke", "post", negative)
    zero = svc.post("/invoke", {"x": 0})
    assert zero.status_code == 422 and zero.json()["detail"][0]["loc"] == ["body"]
    conforms(openapi, "/invoke", "post", zero)
    assert svc.post("/invoke", {"x": 13}).status_code == 500  # a plain exception is the notebook's fault
    assert svc.post("/invoke", {"x": 4}).json() == {"y": 8}


def test_the_body_is_json_whatever_its_content_type(svc: Service) -> None:
    reads_the_body_as_json_whatever_its_content_type(svc)


def test_a_worker_told_a_request_is_coming_reads_it_at_once_when_it_came_in_the_same_read() -> None:
    """The server's word (an empty message) and the request itself can arrive in one read of the pipe.

    Before the fix the worker then polled the empty pipe for its whole spin budget, the request already in its
    buffer: up to NB2SVC_SPIN_US more per request, the common case once the server got faster.
    """
    from nb2svc.runtime.worker import HEADER, Pipe

    rfd, wfd = os.pipe()
    pipe = Pipe(rfd, -1)
    pipe.poke_spin = 3600.0  # an hour: a worker that polls for it never answers within the test
    os.write(wfd, HEADER.pack(0) + HEADER.pack(5) + b"hello")
    got: list[bytes | None] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read()), daemon=True)
    reader.start()
    reader.join(30)
    try:
        assert got == [b"hello"], "the worker polled an empty pipe with the request in its buffer"
    finally:
        os.close(wfd)  # ends a reader that is still polling
        reader.join(5)
        os.close(rfd)


def test_polling_for_each_other_answers_every_request(serve: Callable[..., Service], tmp_path: Path) -> None:
    """NB2SVC_SPIN_US (off by default): the server wakes its worker ahead and polls for the answer."""
    from .test_reliability import notebook

    nb = notebook(tmp_path / "add.ipynb", "", "x: float = 1.0\ny: float = 2.0", "", "total: float = x + y")
    svc = serve(nb, {"NB2SVC_SPIN_US": "500"})
    for i in range(40):  # past the 8 calm requests after which both sides poll
        assert svc.post("/invoke", {"x": i, "y": 1}).json() == {"total": i + 1.0}
