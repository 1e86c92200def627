"""nb2svc's HTTP/1.1 server (nb2svc/runtime/server.py) on the wire: raw sockets against a real `nb2svc serve`.

What a client may do that an HTTP library seldom shows: pipelining, ``Expect: 100-continue``, HTTP/1.0,
``HEAD``, garbage, a body too large to send, and a SIGTERM while a request is running.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import socket
import threading
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from .conftest import Service
from .test_reliability import _children, notebook, outlived

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Any:
    nb = notebook(
        tmp_path_factory.mktemp("add") / "add.ipynb",
        "import time",
        "x: float = 1.0\nsleep: float = 0.0",
        "time.sleep(sleep)",
        "total: float = x + 1",
    )
    service = Service(nb, {"NB2SVC_MAX_BODY": "100000"}).start()
    yield service
    service.stop()


def _post(x: float, sleep: float = 0.0, extra: bytes = b"") -> bytes:
    body = json.dumps({"x": x, "sleep": sleep}).encode()
    return b"POST /invoke HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


def _read_all(sock: socket.socket, seconds: float = 20) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(seconds)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a stream of HTTP/1.1 responses that each say their content-length."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        size = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:size]))
        raw = rest[size:]
    return out


def _connect(svc: Service) -> socket.socket:
    return socket.create_connection(("127.0.0.1", svc.port), timeout=20)


def test_pipelined_requests_are_answered_in_order(svc: Service) -> None:
    with _connect(svc) as s:
        # The first runs 0.3 s: the others are parsed meanwhile and must wait their turn.
        s.sendall(
            _post(1, sleep=0.3)
            + _post(2)
            + b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
            + _post(3, extra=b"Connection: close\r\n")
        )
        answers = _responses(_read_all(s))
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert [json.loads(body).get("total") for _, _, body in answers] == [2.0, 3.0, None, 4.0]
    assert json.loads(answers[2][2])["status"] == "ok"
    assert answers[-1][1]["connection"] == "close"


def test_expect_100_continue_is_answered_before_the_body_is_sent(svc: Service) -> None:
    body = b'{"x": 41}'
    with _connect(svc) as s:
        s.sendall(
            b"POST /invoke HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n" % len(body)
        )
        s.settimeout(5)
        first = s.recv(100)
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        [(status, _, answer)] = _responses(_read_all(s))
    assert status == 200 and json.loads(answer) == {"total": 42.0}


def test_http_1_0_gets_its_answer_then_the_connection_closes(svc: Service) -> None:
    body = b'{"x": 2}'
    with _connect(svc) as s:
        s.sendall(b"POST /invoke HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        [(status, headers, answer)] = _responses(_read_all(s))
    assert status == 200 and json.loads(answer) == {"total": 3.0} and headers["connection"] == "close"


def test_a_malformed_request_is_a_json_400_and_a_close(svc: Service) -> None:
    with _connect(svc) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n")
        [(status, headers, answer)] = _responses(_read_all(s))
    assert status == 400 and headers["content-type"] == "application/json" and headers["x-nb2svc-instance"]
    assert json.loads(answer)["error"] == "bad_request"


def test_a_body_declared_over_the_limit_is_a_413_before_it_is_sent(svc: Service) -> None:
    with _connect(svc) as s:
        s.sendall(b"POST /invoke HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n")
        started = time.monotonic()
        [(status, headers, answer)] = _responses(_read_all(s))  # the server closes: the body is never read
    assert status == 413 and json.loads(answer)["error"] == "body_too_large" and headers["connection"] == "close"
    assert time.monotonic() - started < 10


def test_head_answers_a_get_route_without_a_body_and_every_reply_is_dated(svc: Service) -> None:
    with _connect(svc) as s:
        s.sendall(
            b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        raw = _read_all(s)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    assert length > 0 and rest.startswith(b"HTTP/1.1 200 "), "HEAD sent a body"
    for block in (head, rest.partition(b"\r\n\r\n")[0]):
        date = re.search(rb"date: ([^\r]+)", block)
        assert date is not None
        assert abs(parsedate_to_datetime(date.group(1).decode()).timestamp() - time.time()) < 60
    r = httpx.delete(f"{svc.url}/health")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


def test_sigterm_finishes_the_request_in_flight_then_exits(tmp_path: Path) -> None:
    nb = notebook(
        tmp_path / "slow.ipynb", "import time", "sleep: float = 0.0", "time.sleep(sleep)", "done: bool = True"
    )
    svc = Service(nb).start()
    assert svc.proc is not None
    answers: list[httpx.Response] = []
    slow = threading.Thread(target=lambda: answers.append(svc.post("/invoke", {"sleep": 1.5})))
    slow.start()
    time.sleep(0.5)
    os.kill(svc.proc.pid, signal.SIGTERM)  # the server only: it stops its workers itself
    slow.join(20)
    try:
        assert svc.proc.wait(20) == 0
        assert [(r.status_code, r.json()) for r in answers] == [(200, {"done": True})]
        with pytest.raises(httpx.TransportError):  # it no longer listens
            httpx.get(f"{svc.url}/health", timeout=2)
    finally:
        svc.stop()


def test_a_large_artifact_streams_whole(tmp_path: Path) -> None:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["nb2svc"] = {"kind": "training"}
    nb.cells = [
        new_code_cell("import os, random"),
        new_code_cell("megabytes: int = 1", metadata={"tags": ["parameters"]}),
        new_code_cell(
            "os.makedirs(os.environ.get('NB2SVC_ARTIFACTS', 'artifacts'), exist_ok=True)\n"
            "data = random.Random(7).randbytes(megabytes << 20)\n"
            "with open(os.path.join(os.environ.get('NB2SVC_ARTIFACTS', 'artifacts'), 'blob.bin'), 'wb') as f:\n"
            "    f.write(data)"
        ),
    ]
    path = tmp_path / "blob.ipynb"
    nbformat.write(nb, path)
    svc = Service(path, {"NB2SVC_RUNS_DIR": str(tmp_path / "runs")}).start()
    try:
        run = svc.post("/runs?wait=60", {"megabytes": 24}).json()
        assert run["status"] == "succeeded", run
        with svc.http.stream("GET", f"/runs/{run['id']}/artifacts/blob.bin") as r:
            assert r.status_code == 200 and int(r.headers["content-length"]) == 24 << 20
            digest = hashlib.sha256()
            for chunk in r.iter_bytes():
                digest.update(chunk)
                time.sleep(0.001)  # a slow reader: the server must wait on flow control, not buffer it all
        expected = random.Random(7).randbytes(24 << 20)  # noqa: S311  # test data, as the notebook made it
        assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()
    finally:
        svc.stop()


def test_the_header_timeout_counts_from_the_connection_not_from_its_first_byte(tmp_path: Path) -> None:
    nb = notebook(tmp_path / "t.ipynb", "", "x: int = 1", "", "y: int = x")
    svc = Service(nb, {"NB2SVC_HEADER_TIMEOUT": "2"}).start()
    try:
        with _connect(svc) as s:
            opened = time.monotonic()
            time.sleep(1.5)  # idle, within the timeout; then headers a byte at a time, never finished
            closed_at = None
            for ch in b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 200:
                try:
                    s.send(bytes([ch]))
                except OSError:
                    closed_at = time.monotonic()
                    break
                time.sleep(0.05)
                s.setblocking(False)
                try:
                    if s.recv(100) == b"":
                        closed_at = time.monotonic()
                        break
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
        assert closed_at is not None, "the server never closed a connection whose headers never ended"
        # 2 s from the connection's start (3.5 s if it counted from the first byte), with a second's slack
        assert closed_at - opened < 3.0
    finally:
        svc.stop()


def test_a_second_sigint_stops_at_once_and_leaves_no_worker(tmp_path: Path) -> None:
    nb = notebook(
        tmp_path / "slow.ipynb", "import time", "sleep: float = 0.0", "time.sleep(sleep)", "done: bool = True"
    )
    svc = Service(nb).start()
    failed: list[BaseException] = []

    def slow() -> None:
        try:
            svc.post("/invoke", {"sleep": 60})
        except httpx.TransportError as e:
            failed.append(e)

    try:
        assert svc.proc is not None
        workers = _children(svc.proc.pid)
        assert workers, "the service has no worker process"
        caller = threading.Thread(target=slow, daemon=True)
        caller.start()
        time.sleep(0.5)
        os.kill(svc.proc.pid, signal.SIGINT)  # the first: finish the request in flight (60 s)...
        time.sleep(0.3)
        os.kill(svc.proc.pid, signal.SIGINT)  # ...the second: stop now
        assert svc.proc.wait(10) == 1
        caller.join(10)
        assert failed, "the request in flight was answered"
        assert not outlived(workers, 10), "a worker outlived its server"
    finally:
        svc.stop()
