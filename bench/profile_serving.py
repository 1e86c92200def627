"""Where a served request's time goes: each part of nb2svc's ``POST /invoke`` timed on its own, in-process.

    python bench/profile_serving.py

Parts (medians of many calls, microseconds):
  - ``ServingExecutor.invoke``: the worker round trip plus the idle-worker queue, timeout guard and output check;
  - the whole ASGI app called directly (no socket, no HTTP parsing), nb2svc against the hand-written FastAPI app;
  - input validation (``Validator``: jsonschema), output validation (jsonschema);
  - the worker round trip over its length-prefixed pipe (``Worker.submit``), and the same work without the pipe
    (``Session.invoke`` in this process): their difference is the cost of the process hop;
  - a bare pipe echo through a ``cat`` subprocess with asyncio streams: the floor of any process hop.

It imports nb2svc's runtime internals, so it follows their names; it is a diagnostic, not part of the API.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nb2svc.runtime.app import ASGIAdapter
from nb2svc.runtime.config import Config
from nb2svc.runtime.core import Core
from nb2svc.runtime.serving import ServingExecutor, Worker, plan
from nb2svc.runtime.validation import OutputChecker, Validator
from nb2svc.runtime.worker import Session
from nb2svc.spec import inspect_notebook

BENCH = Path(__file__).resolve().parent
SERVING_NB = BENCH / "notebooks" / "trivial_serving.ipynb"
BODY = json.dumps({"x": 1.5, "y": 2.0}).encode()
N = 3000


def _us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 1)


def time_sync(fn: Callable[[], Any], n: int = N) -> float:
    """Median microseconds of ``fn()``, after n/10 warm-up calls."""
    for _ in range(n // 10):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return _us(samples)


async def time_async(fn: Callable[[], Awaitable[Any]], n: int = N) -> float:
    """Median microseconds of ``await fn()``, after n/10 warm-up calls."""
    for _ in range(n // 10):
        await fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t)
    return _us(samples)


def asgi_call(app: Any) -> Callable[[], Awaitable[int]]:
    """A callable that sends ``POST /invoke`` with BODY straight into an ASGI app; returns the status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/invoke",
        "raw_path": b"/invoke",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }

    async def call() -> int:
        sent = False
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(dict(scope), receive, send)
        if status != 200:
            raise RuntimeError(f"the app answered {status}")
        return status

    return call


async def pipe_echo() -> float:
    """The round trip of one JSON line through ``cat``: the floor of a process hop with asyncio streams."""
    proc = await asyncio.create_subprocess_exec("cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout
    line = json.dumps({"op": "invoke", "values": {"x": 1.5, "y": 2.0}}).encode() + b"\n"

    async def echo() -> None:
        stdin.write(line)
        await stdin.drain()
        json.loads(await stdout.readline())

    try:
        return await time_async(echo)
    finally:
        proc.kill()
        await proc.wait()


async def main() -> int:
    """Time each part and print a table."""
    spec = inspect_notebook(SERVING_NB)
    values = {"x": 1.5, "y": 2.0}
    rows: list[tuple[str, float]] = []

    validate = Validator(spec)
    rows.append(("input: body to values (Validator.parse, msgspec)", time_sync(lambda: validate.parse(BODY))))
    outputs = OutputChecker(spec)
    rows.append(("output check (OutputChecker, msgspec)", time_sync(lambda: outputs.problems({"total": 3.5}))))
    rows.append(("json.loads(body) + json.dumps(answer)", time_sync(lambda: json.dumps(json.loads(BODY)))))

    session = Session(plan(spec))
    assert session.setup()["ok"]
    rows.append(("notebook work in-process (Session.invoke, no pipe)", time_sync(lambda: session.invoke(values))))

    rows.append(("bare pipe echo through `cat` (asyncio streams)", await pipe_echo()))

    worker = await Worker.spawn(str(SERVING_NB.parent))
    try:
        assert json.loads(await worker.submit({"op": "setup", "plan": plan(spec)}).answer)["ok"]

        async def round_trip() -> Any:
            return await worker.submit({"op": "invoke", "values": values}, 60.0).answer

        rows.append(("worker round trip (Worker.submit: pipe + worker, no polling)", await time_async(round_trip)))
    finally:
        await worker.kill()

    service = Core(spec, Config())  # Config(): the prediction log off, as NB2SVC_LOG_URL=off
    await service.executor.start()
    for _ in range(600):
        if service.executor.state == "ok":
            break
        await asyncio.sleep(0.05)
    try:
        executor = service.executor
        assert isinstance(executor, ServingExecutor)
        rows.append(
            (
                "ServingExecutor.invoke (idle queue, timeout guard, worker, output check)",
                await time_async(lambda: executor.invoke(values)),
            )
        )
        rows.append(("nb2svc ASGI app, whole request in-process", await time_async(asgi_call(ASGIAdapter(service)))))
    finally:
        await service.executor.close()

    sys.path.insert(0, str(BENCH))
    from handwritten_fastapi import app as fastapi_app

    rows.append(("FastAPI ASGI app, whole request in-process", await time_async(asgi_call(fastapi_app))))

    width = max(len(name) for name, _ in rows)
    print(f"| {'part'.ljust(width)} | median µs |\n|{'-' * (width + 2)}|---:|")
    for name, us in rows:
        print(f"| {name.ljust(width)} | {us} |")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
