"""Serving: a pool of worker processes, each holding the notebook's state after setup."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from typing import Any

import msgspec

from ..notebook import Cell, strip_pip_lines
from ..spec import ServiceSpec
from .config import Config
from .errors import HTTPError, invalid_input_error, notebook_error
from .validation import OutputChecker

log = logging.getLogger("nb2svc.serving")
_LINE_LIMIT = 256 * 1024 * 1024  # one protocol message: a request or response body, JSON-encoded
_INTERRUPT_GRACE = 2.0
_RETRY_FIRST = 1.0  # seconds before a failed setup is tried again; doubles each time
_RETRY_MAX = 60.0


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


class OutputTooLarge(Exception):
    pass


class Worker:
    """One ``python -m nb2svc.runtime.worker`` process and its pipe."""

    def __init__(self, proc: asyncio.subprocess.Process, limit: int) -> None:
        self.proc = proc
        self.limit = limit

    @classmethod
    async def spawn(cls, cwd: str, limit: int = _LINE_LIMIT) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nb2svc.runtime.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=cwd,
            limit=limit,
            # the worker ends with this process however it ends (see worker.die_with_parent)
            env={**os.environ, "NB2SVC_PARENT_PID": str(os.getpid())},
        )
        return cls(proc, limit)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def send(self, msg: dict[str, Any]) -> None:
        if self.proc.stdin is None:
            raise WorkerDied("the notebook's process has no input pipe")
        self.proc.stdin.write(msgspec.json.encode(msg) + b"\n")
        await self.proc.stdin.drain()

    async def receive(self) -> dict[str, Any]:
        if self.proc.stdout is None:
            raise WorkerDied("the notebook's process has no output pipe")
        try:
            line = await self.proc.stdout.readline()
        except ValueError:  # over the stream's limit: the rest of the line is still in the pipe
            self.kill_now()
            raise OutputTooLarge(f"the outputs are larger than {self.limit} bytes (NB2SVC_MAX_OUTPUT)") from None
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
    """Keeps ``workers`` processes set up, each watched by a task of its own, and hands each request to an idle one.

    A worker that exits (a crash, a kill, a request that had to be stopped) is replaced at once, idle or
    not; a setup that fails is retried with a growing delay (1 s, doubling up to a minute). The service
    answers while any worker is ready; ``/health`` reports the rest.
    """

    def __init__(self, spec: ServiceSpec, config: Config) -> None:
        self.spec = spec
        self.config = config
        self._plan = plan(spec)
        self._idle: asyncio.Queue[Worker] = asyncio.Queue()
        self._ready: set[Worker] = set()
        self._failing: dict[int, dict[str, Any]] = {}  # slot → its latest setup error, while it keeps failing
        self._setup_failures = 0
        self._outputs = OutputChecker(spec)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._ever_ready = False  # once it has served, a request waits for a replacement worker, not a 503

    @property
    def state(self) -> str:
        if self._ready:
            return "ok"
        return "failed" if self._failing else "starting"

    @property
    def setup_error(self) -> dict[str, Any] | None:
        return next(iter(self._failing.values()), None)

    def workers(self) -> dict[str, int]:
        """What ``/health`` shows of the pool."""
        return {"desired": self.config.workers, "ready": len(self._ready), "setup_failures": self._setup_failures}

    async def start(self) -> None:
        """Start the workers in the background; `state` turns "ok" when the first is ready."""
        self._tasks = [asyncio.ensure_future(self._keep(slot)) for slot in range(self.config.workers)]

    async def _keep(self, slot: int) -> None:
        delay = _RETRY_FIRST
        while not self._closing:
            worker = await Worker.spawn(str(self.spec.notebook.parent), self.config.max_output)
            try:
                reply = await worker.call({"op": "setup", "plan": self._plan})
            except (WorkerDied, OutputTooLarge) as e:
                reply = {"ok": False, "error": {"cell": 0, "ename": "WorkerDied", "evalue": str(e), "traceback": []}}
            except asyncio.CancelledError:
                await worker.kill()
                raise
            if not reply["ok"]:
                await worker.kill()
                self._setup_failures += 1
                error = setup_failure(reply, self.config)
                error["retry_in_s"] = delay
                self._failing[slot] = error
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            delay = _RETRY_FIRST
            self._failing.pop(slot, None)
            self._ever_ready = True
            self._ready.add(worker)
            self._idle.put_nowait(worker)
            try:
                code = await worker.proc.wait()
            finally:
                self._ready.discard(worker)
            if not self._closing:
                log.warning("a worker of %s exited (code %s); starting another", self.spec.notebook.name, code)

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in list(self._ready):
            await worker.kill()
        self._ready.clear()

    async def _take(self) -> Worker:
        while True:
            try:
                worker = self._idle.get_nowait()  # the common case: no timer, no task
            except asyncio.QueueEmpty:
                if self.state == "failed" or not self._ever_ready:  # at start /health says 503 too
                    raise self._not_ready() from None
                try:
                    worker = await asyncio.wait_for(self._idle.get(), self.config.timeout)
                except TimeoutError:
                    raise HTTPError(503, "busy", f"no worker was free within {self.config.timeout:g} s") from None
            if worker.alive:
                return worker
            # died while idle: its keeper is already starting another; try the next

    def _not_ready(self) -> HTTPError:
        return HTTPError(
            503,
            "not_ready",
            "the service is starting" if self.state == "starting" else "the notebook's setup failed",
            **({"cause": self.setup_error} if self.setup_error else {}),
        )

    async def invoke(self, values: dict[str, Any]) -> dict[str, Any]:
        worker = await self._take()
        healthy = False
        try:
            reply = await self._call_with_timeout(worker, values)
            healthy = True
        finally:
            if healthy:
                self._idle.put_nowait(worker)
            else:
                await worker.kill()  # its keeper starts another
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
        except OutputTooLarge as e:
            raise HTTPError(500, "output_error", str(e)) from None
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
