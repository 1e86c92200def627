"""Serving: a pool of worker processes, each holding the notebook's state after setup."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from typing import Any

from ..notebook import Cell, strip_pip_lines
from ..spec import ServiceSpec
from .config import Config
from .errors import HTTPError, invalid_input_error, notebook_error
from .validation import OutputChecker

log = logging.getLogger("nb2svc.serving")
_LINE_LIMIT = 256 * 1024 * 1024  # one protocol message: a request or response body, JSON-encoded
_INTERRUPT_GRACE = 2.0


class WorkerDied(Exception):
    pass


def plan(spec: ServiceSpec) -> dict[str, Any]:
    def cell(c: Cell) -> dict[str, Any]:
        return {"number": c.number, "source": strip_pip_lines(c.source)}

    return {
        "setup": [cell(c) for c in spec.setup_cells],
        "parameters": cell(spec.parameters_cell),
        "request": [cell(c) for c in spec.request_cells],
        "outputs": [o.name for o in spec.outputs],
    }


class Worker:
    """One ``python -m nb2svc.runtime.worker`` process and its pipe."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, cwd: str) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nb2svc.runtime.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=cwd,
            limit=_LINE_LIMIT,
        )
        return cls(proc)

    async def send(self, msg: dict[str, Any]) -> None:
        if self.proc.stdin is None:
            raise WorkerDied("the notebook's process has no input pipe")
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        await self.proc.stdin.drain()

    async def receive(self) -> dict[str, Any]:
        if self.proc.stdout is None:
            raise WorkerDied("the notebook's process has no output pipe")
        line = await self.proc.stdout.readline()
        if not line:
            code = await self.proc.wait()
            raise WorkerDied(f"the notebook's process exited with code {code}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        try:
            await self.send(msg)
        except (BrokenPipeError, ConnectionResetError):
            raise WorkerDied(f"the notebook's process exited with code {await self.proc.wait()}") from None
        return await self.receive()

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)

    def kill_now(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    async def kill(self) -> None:
        self.kill_now()
        await self.proc.wait()


class ServingExecutor:
    """Runs setup in each worker at start, then hands each request to an idle worker."""

    def __init__(self, spec: ServiceSpec, config: Config) -> None:
        self.spec = spec
        self.config = config
        self.state = "starting"
        self.setup_error: dict[str, Any] | None = None
        self._plan = plan(spec)
        self._idle: asyncio.Queue[Worker] = asyncio.Queue()
        self._workers: set[Worker] = set()
        self._outputs = OutputChecker(spec)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the workers in the background; `state` turns "ok" when the first is ready."""
        for _ in range(self.config.workers):
            self._background(self._add_worker())

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _add_worker(self) -> None:
        worker = await Worker.spawn(str(self.spec.notebook.parent))
        self._workers.add(worker)
        try:
            reply = await worker.call({"op": "setup", "plan": self._plan})
        except WorkerDied as e:
            reply = {"ok": False, "error": {"cell": 0, "ename": "WorkerDied", "evalue": str(e), "traceback": []}}
        if not reply["ok"]:
            self.setup_error = setup_failure(reply, self.config)
            self.state = "failed"
            self._workers.discard(worker)
            await worker.kill()
            return
        self.state = "ok"
        self._idle.put_nowait(worker)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for worker in list(self._workers):
            await worker.kill()
        self._workers.clear()

    async def invoke(self, values: dict[str, Any]) -> dict[str, Any]:
        if self.state != "ok":
            raise HTTPError(
                503,
                "not_ready",
                "the service is starting" if self.state == "starting" else "the notebook's setup failed",
                **({"cause": self.setup_error} if self.setup_error else {}),
            )
        try:
            worker = self._idle.get_nowait()  # the common case: no timer, no task
        except asyncio.QueueEmpty:
            try:
                worker = await asyncio.wait_for(self._idle.get(), self.config.timeout)
            except TimeoutError:
                raise HTTPError(503, "busy", f"no worker was free within {self.config.timeout:g} s") from None
        healthy = False
        try:
            reply = await self._call_with_timeout(worker, values)
            healthy = True
        finally:
            if healthy:
                self._idle.put_nowait(worker)
            else:
                self._workers.discard(worker)
                await worker.kill()
                self._background(self._add_worker())
        return self._answer(reply)

    async def _call_with_timeout(self, worker: Worker, values: dict[str, Any]) -> dict[str, Any]:
        """Timers, not a task per request: SIGINT at the timeout, a kill after the grace period."""
        loop = asyncio.get_running_loop()
        timed_out = False

        def interrupt() -> None:
            nonlocal timed_out
            timed_out = True
            worker.interrupt()

        timers = [
            loop.call_later(self.config.timeout, interrupt),
            loop.call_later(self.config.timeout + _INTERRUPT_GRACE, worker.kill_now),
        ]
        try:
            return await worker.call({"op": "invoke", "values": values})
        except WorkerDied as e:
            if timed_out:  # stuck where SIGINT could not reach it, so killed
                raise self._timeout() from None
            raise HTTPError(500, "worker_died", f"{e} while running the request; it is being restarted") from None
        finally:
            for timer in timers:
                timer.cancel()

    def _timeout(self) -> HTTPError:
        return timeout_error(self.config)

    def _answer(self, reply: dict[str, Any]) -> dict[str, Any]:
        return answer(reply, self._outputs, self.config)


def timeout_error(config: Config) -> HTTPError:
    return HTTPError(504, "timeout", f"the notebook did not answer within {config.timeout:g} s")


def setup_failure(reply: dict[str, Any], config: Config) -> dict[str, Any]:
    """The error body /health shows after a failed setup (a worker's setup reply)."""
    err = reply["error"]
    log.error("setup failed: cell %s raised %s: %s", err["cell"], err["ename"], err["evalue"])
    body = notebook_error(err["cell"], err["ename"], err["evalue"], err.get("traceback"), config.debug).body
    body["message"] = "setup " + body["message"]
    return body


def answer(reply: dict[str, Any], outputs: OutputChecker, config: Config) -> dict[str, Any]:
    """A worker's invoke reply as the response body, or the HTTPError it stands for."""
    if reply.get("timeout"):
        raise timeout_error(config)
    if "output_error" in reply:
        raise HTTPError(500, "output_error", reply["output_error"])
    if not reply["ok"]:
        err = reply["error"]
        if "invalid_input" in err:  # the notebook's own check of its input: the caller's to fix
            raise invalid_input_error(err["cell"], err["evalue"], err["invalid_input"]["field"])
        raise notebook_error(err["cell"], err["ename"], err["evalue"], err.get("traceback"), config.debug)
    values: dict[str, Any] = reply["outputs"]
    problems = outputs.problems(values)
    if problems:
        raise HTTPError(500, "output_error", problems)
    return values
