"""Hostile input, faults and limits, against real `nb2svc serve` processes (issue 8's serving defects).

Each test is bounded in count and time and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from .conftest import Service, free_port

pytestmark = pytest.mark.slow


def notebook(path: Path, setup: str, params: str, request: str, outputs: str) -> Path:
    """A serving notebook of four cells: setup, parameters, a request cell, outputs."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        new_code_cell(setup),
        new_code_cell(params, metadata={"tags": ["parameters"]}),
        new_code_cell(request),
        new_code_cell(outputs, metadata={"tags": ["outputs"]}),
    ]
    nbformat.write(nb, path)
    return path


def strict_json(text: str) -> Any:
    """What JavaScript's JSON.parse accepts: no NaN, no Infinity."""

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("echo")
    nb = notebook(
        d / "echo.ipynb",
        "import os, sys, time\nfrom typing import Any, Literal, Optional",
        'items: list[int] = [1, 2]\nmode: Literal["a", "b"] = "a"\nname: str = "x"\nx: float = 1.0\n'
        "big: bool = False\nsize: int = 0\nquit: bool = False",
        "if quit:\n    sys.exit()\nvalue = 10**5000 if big else 'y' * size",
        "n: int = len(items)\nout: Any = value",
    )
    svc = Service(nb, {"NB2SVC_WORKERS": "1", "NB2SVC_MAX_OUTPUT": "100000", "NB2SVC_INSTANCE": "replica-a"})
    svc.start()
    yield svc
    svc.stop()


def test_a_huge_bad_body_is_a_small_422_and_does_not_block_the_server(echo: Service) -> None:
    body = json.dumps({"items": [[]] * 1_000_000}).encode()  # 3 MB, a million wrong items
    result: dict[str, httpx.Response] = {}

    def send() -> None:
        with httpx.Client(base_url=echo.url, timeout=120) as c:
            result["r"] = c.post("/invoke", content=body)

    t = threading.Thread(target=send)
    t.start()
    healths = []
    while t.is_alive() and len(healths) < 50:
        healths.append(httpx.get(f"{echo.url}/health", timeout=5).status_code)  # a blocked loop times out here
    t.join(120)
    r = result["r"]
    assert r.status_code == 422
    assert len(r.content) < 20_000, len(r.content)
    err = strict_json(r.text)
    assert len(err["detail"]) == 20 and err["error_count"] > 20 and err["error_count_exact"] is False
    assert err["detail"][0]["loc"] == ["body", "items", 0] and "expected integer" in err["detail"][0]["msg"]
    assert all(code == 200 for code in healths)


def test_a_large_valid_body_is_read_off_the_event_loop(echo: Service) -> None:
    body = json.dumps({"items": list(range(1_000_000))}).encode()  # 6.9 MB of ints, under the 10 MB limit
    r = httpx.post(f"{echo.url}/invoke", content=body, timeout=120)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["n"] == 1_000_000


@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [
        (b'{"x": NaN}', 400, None),
        (b'{"x": Infinity}', 400, None),
        (b'{"x": -Infinity}', 400, None),
        (b'{"x": 1e400}', 422, "x"),
        (b'{"size": ' + b"9" * 5000 + b"}", 422, "size"),
        (b"[" * 5000 + b"]" * 5000, 400, None),
        (b'{"items": ' + b"[" * 3000 + b"]" * 3000 + b"}", 400, None),
    ],
)
def test_non_json_numbers_depth_and_huge_ints_are_a_400_or_422_never_a_500(
    echo: Service, raw: bytes, status: int, field: str | None
) -> None:
    r = httpx.post(f"{echo.url}/invoke", content=raw, timeout=30)
    assert r.status_code == status, r.text[:300]
    err = strict_json(r.text)
    if field:
        assert [d["field"] for d in err["detail"]] == [field]
    if b"NaN" in raw or b"Infinity" in raw:
        assert "NaN and Infinity are not JSON" in err["message"]


def test_an_int_output_too_big_for_json_is_an_output_error_not_a_dead_worker(echo: Service) -> None:
    pid = echo.http.get("/health").json()
    r = echo.post("/invoke", {"big": True})
    assert r.status_code == 500 and r.json()["error"] == "output_error", r.text
    assert "4300 digits" in r.json()["message"]
    assert echo.post("/invoke", {}).status_code == 200
    assert echo.http.get("/health").json()["workers"]["setup_failures"] == pid["workers"]["setup_failures"]


def test_an_output_over_the_limit_is_an_output_error_and_the_service_goes_on(echo: Service) -> None:
    r = echo.post("/invoke", {"size": 300_000})  # NB2SVC_MAX_OUTPUT=100000
    assert r.status_code == 500 and r.json()["error"] == "output_error", r.text
    assert "larger than 100000 bytes" in r.json()["message"]
    assert echo.post("/invoke", {"size": 10}).json()["out"] == "y" * 10


def test_messages_name_null_once_and_an_empty_exception_value_cleanly(echo: Service) -> None:
    r = echo.post("/invoke", {"name": None})
    assert r.json()["detail"][0]["msg"] == "expected string, got null"
    r = echo.post("/invoke", {"quit": True})
    assert r.status_code == 500 and r.json()["message"] == "cell 3 raised SystemExit", r.text


def test_every_answer_names_the_instance_and_a_405_says_what_is_allowed(echo: Service) -> None:
    for r in [
        echo.http.get("/health"),
        echo.http.get("/nowhere"),
        echo.post("/invoke", {"x": "no"}),
        echo.http.post("/invoke", content=b"x" * 11_000_000),
        echo.http.get("/invoke"),
    ]:
        assert r.headers["x-nb2svc-instance"] == "replica-a", (r.status_code, r.headers)
    r = echo.http.get("/invoke")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"] == "method_not_allowed"
    r = echo.http.delete("/health")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert echo.http.get("/health%00").status_code == 404


def test_idle_and_slow_connections_are_closed_and_new_ones_are_answered(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "idle.ipynb", "", "a: int = 1", "b = a", "b: int = b")
    svc = Service(nb, {"NB2SVC_HEADER_TIMEOUT": "1", "NB2SVC_MAX_CONNECTIONS": "50"})
    svc.start()
    try:
        idle = [socket.create_connection(("127.0.0.1", svc.port)) for _ in range(40)]
        slow = socket.create_connection(("127.0.0.1", svc.port))
        closed_while_sending = False
        for ch in b"GET /health HTTP/1.1\r\nHost: x\r\n":  # headers a byte at a time: slowloris
            try:
                slow.send(bytes([ch]))
            except (BrokenPipeError, ConnectionResetError):
                closed_while_sending = True
                break
            time.sleep(0.1)
        assert closed_while_sending or slow.recv(100) == b""
        for s in idle:
            s.settimeout(10)
            assert s.recv(100) == b"", "the server should have closed an idle connection"
            s.close()
        slow.close()
        held = [socket.create_connection(("127.0.0.1", svc.port)) for _ in range(55)]
        try:
            r = httpx.post(f"{svc.url}/invoke", json={}, timeout=5)  # past the limit: a JSON 503 at once, no hang
            assert r.status_code == 503 and r.json()["error"] == "too_many_connections"
            assert r.headers["x-nb2svc-instance"]  # every answer names its instance (SPEC section 2)
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + 10
        while httpx.post(f"{svc.url}/invoke", json={}, timeout=5).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        svc.stop()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[1].split()[0] == "Z")


def outlived(pids: list[int], seconds: float) -> list[int]:
    """The processes of ``pids`` still alive after up to ``seconds`` (an empty list as soon as all are gone)."""
    deadline = time.monotonic() + seconds
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_killing_the_server_ends_its_workers_even_mid_request(tmp_path: Path) -> None:
    nb = notebook(
        tmp_path / "loop.ipynb", "import time", "spin: bool = False", "while spin:\n    pass", "ok: bool = True"
    )
    svc = Service(nb, {"NB2SVC_WORKERS": "2", "NB2SVC_TIMEOUT": "600"})
    svc.start()
    assert svc.proc is not None
    deadline = time.monotonic() + 30
    while len(workers := _children(svc.proc.pid)) < 2:
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.2)

    def spin() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{svc.url}/invoke", json={"spin": True}, timeout=5)

    threading.Thread(target=spin, daemon=True).start()
    time.sleep(1)
    os.kill(svc.proc.pid, signal.SIGKILL)
    svc.proc.wait()
    assert not outlived(workers, 10), "a worker outlived its server"
    svc.stop()


def _health(svc: Service) -> dict[str, Any]:
    body: dict[str, Any] = svc.http.get("/health").json()
    return body


def test_one_worker_whose_setup_fails_does_not_take_the_service_down(tmp_path: Path) -> None:
    # the first worker takes the lock file; the second's setup fails on it, and keeps failing on retry
    nb = notebook(
        tmp_path / "half.ipynb",
        "import os\nos.open('lock', os.O_CREAT | os.O_EXCL)",
        "a: int = 1",
        "b = a * 2",
        "b: int = b",
    )
    svc = Service(nb, {"NB2SVC_WORKERS": "2"})
    svc.start()
    try:
        deadline = time.monotonic() + 30
        while _health(svc)["workers"]["setup_failures"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        answers = [svc.post("/invoke", {"a": i}).status_code for i in range(20)]
        assert answers == [200] * 20
        h = svc.http.get("/health")
        assert h.status_code == 200
        body = h.json()
        assert body["status"] == "ok" and body["workers"]["ready"] == 1 and body["workers"]["desired"] == 2
        assert "FileExistsError" in body["error"]["message"] and body["error"]["retry_in_s"] >= 1
    finally:
        svc.stop()


def test_a_failed_setup_is_retried_until_it_works(tmp_path: Path) -> None:
    # a request crashes the only worker and leaves a marker; the next setup fails once on it, the retry works
    nb = notebook(
        tmp_path / "flaky.ipynb",
        "import os\nif os.path.exists('fail-once'):\n    os.remove('fail-once')\n    raise RuntimeError('transient')",
        "crash: bool = False",
        "if crash:\n    open('fail-once', 'w').close()\n    os._exit(1)",
        "ok: bool = True",
    )
    svc = Service(nb, {"NB2SVC_WORKERS": "1"})
    svc.start()
    try:
        assert svc.post("/invoke", {"crash": True}).json()["error"] == "worker_died"
        deadline = time.monotonic() + 30
        seen_failed = False
        while True:
            h = svc.http.get("/health")
            seen_failed |= h.json()["status"] == "failed"
            if h.status_code == 200:
                break
            assert time.monotonic() < deadline, h.text
            time.sleep(0.1)
        assert seen_failed, "the failed setup should show in /health while it is retried"
        assert h.json()["workers"]["setup_failures"] == 1
        assert svc.post("/invoke", {}).json() == {"ok": True}
    finally:
        svc.stop()


def test_a_dead_idle_worker_is_replaced_before_a_request_meets_it(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "idle_kill.ipynb", "", "a: int = 1", "b = a", "b: int = b")
    svc = Service(nb, {"NB2SVC_WORKERS": "1"})
    svc.start()
    try:
        assert svc.proc is not None
        (worker,) = _children(svc.proc.pid)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _children(svc.proc.pid) in ([], [worker]) or _health(svc)["workers"]["ready"] != 1:
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            time.sleep(0.1)
        assert svc.post("/invoke", {"a": 3}).json() == {"b": 3}
    finally:
        svc.stop()


def test_serve_on_a_port_in_use_fails_before_it_announces(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "port.ipynb", "", "a: int = 1", "b = a", "b: int = b")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "nb2svc.cli", "serve", str(nb), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 3, r.stderr
    assert "serving" not in r.stderr and "already in use" in r.stderr, r.stderr
    assert free_port()  # the machine still has ports; nothing was left listening


def test_keep_alive_requests_are_not_held_back_by_nagle(echo: Service) -> None:
    # Without TCP_NODELAY on the accepted sockets every keep-alive request after the first waited for a
    # delayed ACK: 40 ms each, whatever the machine. A bound 20 times the usual round trip still catches it.
    times = []
    with httpx.Client(base_url=echo.url) as c:
        for _ in range(15):
            started = time.perf_counter()
            assert c.post("/invoke", json={}).status_code == 200
            times.append(time.perf_counter() - started)
    assert sorted(times)[7] < 0.02, times


def test_a_nul_in_an_artifact_path_is_a_404_and_a_killed_training_server_leaves_no_kernel(
    tmp_path: Path,
) -> None:
    from .conftest import NOTEBOOKS

    svc = Service(NOTEBOOKS / "training.ipynb", {"NB2SVC_RUNS_DIR": str(tmp_path / "runs")})
    svc.start()
    try:
        run = svc.post("/runs?wait=120", {}).json()
        assert run["status"] == "succeeded", run
        r = svc.http.get(f"/runs/{run['id']}/artifacts/model%00.json")
        assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
        assert svc.http.get(f"/runs/{run['id']}/artifacts/model.json").status_code == 200
        assert svc.proc is not None
        deadline = time.monotonic() + 60
        while not (kernels := _children(svc.proc.pid)):  # the warm kernel the pool keeps
            assert time.monotonic() < deadline, "no warm kernel was started"
            time.sleep(0.2)
        os.kill(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait()
        assert not outlived(kernels, 15), "a kernel outlived its server"
    finally:
        svc.stop()
