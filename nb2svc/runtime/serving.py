"""Serving: a pool of worker processes, each holding the notebook's state after setup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from ..notebook import Cell, strip_pip_lines
from ..spec import ServiceSpec
from .config import Config
from .errors import HTTPError, invalid_input_error, notebook_error
from .validation import OutputChecker
from .worker import HEADER, READ_SIZE

log = logging.getLogger("nb2svc.serving")
_MESSAGE_LIMIT = 256 * 1024 * 1024  # bytes of one answer from a worker (Config.max_output in a service)
_INTERRUPT_GRACE = 2.0
_DEPTH = 8  # requests written to one worker at once: one running, the rest waiting in its pipe
_CALM = 8  # requests in a row alone in flight before the server polls for answers
_RETRY_FIRST = 1.0  # seconds before a failed setup is tried again; doubles each time
_RETRY_MAX = 60.0


class WorkerDied(Exception):
    pass


class NotStarted(Exception):
    """The worker ended before it began this request, so another worker can run it."""


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


@dataclass(eq=False)
class _Call:
    seq: int
    answer: asyncio.Future[bytes]
    timeout: float  # seconds from when the worker starts it; 0: none (setup)
    deadline: float = 0.0  # on the loop's clock, once it runs
    timed_out: bool = False


class Worker:
    """One ``python -m nb2svc.runtime.worker`` process and the pipes of its protocol (see worker.Pipe).

    Requests are written to the worker as they come, up to a few ahead (``pending``); it runs them one at
    a time, in order, and its answers come back in that order. So the worker never waits for this
    process's event loop between two requests. Only the request at the head of ``pending`` is running:
    its timeout is armed when it gets there, and an interrupt names it on the control pipe, so a late
    SIGINT never stops the next one. If the process ends, the head request failed; the others never
    started (`NotStarted`) and go to another worker.
    """

    def __init__(self, proc: asyncio.subprocess.Process, wfd: int, rfd: int, control: int, limit: int) -> None:
        self.proc = proc
        self.limit = limit
        self.pending: deque[_Call] = deque()
        self.on_free: Callable[[], None] = lambda: None  # called each time a request leaves ``pending``
        self._wfd, self._rfd, self._control = wfd, rfd, control
        self._buf = bytearray()
        self._out = bytearray()  # written when the pipe has room again
        self._seq = 0
        self._eof = False
        self._poked = 0.0  # when it was last told a request is coming
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(rfd, self._readable)

    @classmethod
    async def spawn(cls, cwd: str, limit: int = _MESSAGE_LIMIT) -> Worker:
        to_worker, to_server, control = os.pipe(), os.pipe(), os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "nb2svc.runtime.worker",
                stdin=to_worker[0],
                stdout=to_server[1],
                pass_fds=(control[0],),
                cwd=cwd,
                # the worker ends with this process however it ends (see worker.die_with_parent)
                env={**os.environ, "NB2SVC_PARENT_PID": str(os.getpid()), "NB2SVC_CONTROL_FD": str(control[0])},
            )
        except BaseException:
            for fd in (*to_worker, *to_server, *control):
                os.close(fd)
            raise
        for fd in (to_worker[0], to_server[1], control[0]):
            os.close(fd)
        for fd in (to_worker[1], to_server[0], control[1]):
            os.set_blocking(fd, False)
        return cls(proc, to_worker[1], to_server[0], control[1], limit)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self._eof

    def submit(self, msg: dict[str, Any], timeout: float = 0.0) -> _Call:
        """Send a request; its answer (the JSON bytes) comes in ``call.answer``."""
        self._seq += 1
        call = _Call(self._seq, self._loop.create_future(), timeout)
        data = msgspec.json.encode({**msg, "seq": self._seq})
        self.pending.append(call)
        self._poked = 0.0
        if len(self.pending) == 1:
            self._started(call)
        self._write(HEADER.pack(len(data)) + data)
        return call

    def poke(self, spin: float) -> None:
        """Tell an idle worker a request is on its way (an empty message): it polls for ``spin`` seconds."""
        now = time.perf_counter()
        if not self.pending and now - self._poked > spin:  # not while it is still polling after the last word
            self._poked = now
            self._write(HEADER.pack(0))

    def poll(self, call: _Call, spin: float) -> None:
        """Read the pipe for up to ``spin`` seconds, without yielding to the event loop, until ``call`` is answered."""
        deadline = time.perf_counter() + spin
        while not call.answer.done() and not self._eof and time.perf_counter() < deadline:
            self._readable()

    def _write(self, data: bytes) -> None:
        if self._out:
            self._out += data
            return
        try:
            sent = os.write(self._wfd, data)
        except BlockingIOError:
            sent = 0
        except OSError:  # the process is gone: reading its end of the pipe says so
            return
        if sent < len(data):
            self._out += memoryview(data)[sent:]
            self._loop.add_writer(self._wfd, self._flush)

    def _flush(self) -> None:
        try:
            sent = os.write(self._wfd, self._out)
        except BlockingIOError:
            return
        except OSError:
            sent = len(self._out)
        del self._out[:sent]
        if not self._out:
            self._loop.remove_writer(self._wfd)

    def _started(self, call: _Call) -> None:
        """``call`` is at the head: the worker runs it from now on, within its timeout."""
        if call.timeout:
            call.deadline = self._loop.time() + call.timeout
            if self._timer is None:  # else the timer armed for an earlier head comes first, and re-arms
                self._timer = self._loop.call_at(call.deadline, self._check)

    def _check(self) -> None:
        """The one timer: SIGINT the head at its deadline, end the process if it is still there after the grace."""
        self._timer = None
        if not self.pending or not self.pending[0].timeout:
            return
        call, now = self.pending[0], self._loop.time()
        if now < call.deadline:
            when = call.deadline
        elif not call.timed_out:
            call.timed_out = True
            with contextlib.suppress(OSError):
                os.write(self._control, HEADER.pack(call.seq))
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            when = call.deadline + _INTERRUPT_GRACE
        else:  # SIGINT could not stop it (inside C code): end the process
            self.kill_now()
            return
        self._timer = self._loop.call_at(when, self._check)

    def _readable(self) -> None:
        while not self._eof:
            want = max(READ_SIZE, len(self._buf))
            try:
                chunk = os.read(self._rfd, want)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._ended()
                return
            self._buf += chunk
            if len(chunk) < want:  # the pipe is drained: no read that would only say so (the loop calls again)
                break
        try:
            while self.pending and (message := self._frame()) is not None:
                self._answered(message)
        except OutputTooLarge as e:
            self.kill_now()
            self._fail(self.pending.popleft(), e)

    def _frame(self) -> bytes | None:
        """The complete message at the head of what was read, taken off it; None until there is one."""
        buf = self._buf
        if len(buf) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(buf)
        if size > self.limit:  # the worker checks its answers' size: this one no longer speaks the protocol
            raise OutputTooLarge(f"the outputs are larger than {self.limit} bytes (NB2SVC_MAX_OUTPUT)")
        end = HEADER.size + size
        if len(buf) < end:
            return None
        with memoryview(buf) as view:
            message = bytes(view[HEADER.size : end])
        del buf[:end]
        return message

    def _answered(self, message: bytes) -> None:
        call = self.pending.popleft()
        if not call.answer.done():  # not given up on by its caller
            call.answer.set_result(message)
        if self.pending:
            self._started(self.pending[0])
        self.on_free()

    def _fail(self, call: _Call, error: Exception) -> None:
        if not call.answer.done():
            call.answer.set_exception(error)
        self.on_free()

    def _ended(self) -> None:
        self._eof = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop.remove_reader(self._rfd)
        if self._out:
            self._loop.remove_writer(self._wfd)
            self._out.clear()
        first = True
        while self.pending:
            self._fail(self.pending.popleft(), WorkerDied() if first else NotStarted())
            first = False

    def kill_now(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    async def kill(self) -> None:
        self.kill_now()
        await self.proc.wait()
        self.close()

    def close(self) -> None:
        """Let go of the pipes (once the process has ended)."""
        if self._rfd >= 0:
            if not self._eof:
                self._ended()
            for fd in (self._rfd, self._wfd, self._control):
                os.close(fd)
            self._rfd = self._wfd = self._control = -1


class ServingExecutor:
    """Keeps ``workers`` processes set up, each watched by a task of its own, and hands each request to one.

    A request goes to the worker with the fewest requests pending, up to ``_DEPTH`` (one running, the rest
    already in its pipe); past that it waits for room, up to the timeout (503 busy). A worker that exits
    (a crash, a kill, a request that had to be stopped) is replaced at once, idle or not; a setup that
    fails is retried with a growing delay (1 s, doubling up to a minute). The service answers while any
    worker is ready; ``/health`` reports the rest.

    With one request in flight, the server polls for the answer for up to ``NB2SVC_SPIN_US`` while the
    worker's recent answers came that fast, and wakes the worker as the request comes in, before it is
    validated: on a VM each process's wake-up costs tens of microseconds; polling costs a few.
    """

    def __init__(self, spec: ServiceSpec, config: Config) -> None:
        self.spec = spec
        self.config = config
        self._plan = plan(spec)
        self._ready: list[Worker] = []
        self._waiting: deque[asyncio.Future[None]] = deque()  # requests waiting for room in a worker
        self._failing: dict[int, dict[str, Any]] = {}  # slot → its latest setup error, while it keeps failing
        self._setup_failures = 0
        self._outputs = OutputChecker(spec)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._ever_ready = False  # once it has served, a request waits for a replacement worker, not a 503
        self._spin = config.spin
        self._service = 0.0  # how long the worker took to answer lately, when nothing else was in flight
        self._inflight = 0
        self._calm = 0  # requests in a row that came with no other in flight

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
            setup = {"op": "setup", "plan": self._plan, "limit": self.config.max_output, "poke_spin": self._spin}
            try:
                reply = msgspec.json.decode(await worker.submit(setup).answer)
            except (WorkerDied, OutputTooLarge) as e:  # the first message: it cannot be NotStarted
                code = await worker.proc.wait()
                why = f"the notebook's process exited with code {code}" if isinstance(e, WorkerDied) else str(e)
                reply = {"ok": False, "error": {"cell": 0, "ename": "WorkerDied", "evalue": why, "traceback": []}}
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
            worker.on_free = self._wake
            self._ready.append(worker)
            self._wake()
            try:
                code = await worker.proc.wait()
            finally:
                self._ready.remove(worker)
                worker.close()
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

    def _wake(self) -> None:
        """Room in a worker (a request answered, a worker ready): as many of the longest-waiting requests try again."""
        if not self._waiting:
            return
        room = sum(_DEPTH - len(w.pending) for w in self._ready if w.alive)
        while self._waiting and room > 0:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1

    def _pick(self) -> Worker | None:
        best: Worker | None = None
        for worker in self._ready:
            if (
                worker.alive
                and len(worker.pending) < _DEPTH
                and (best is None or len(worker.pending) < len(best.pending))
            ):
                best = worker
                if not worker.pending:
                    break
        return best

    async def _take(self) -> Worker:
        worker = self._pick()
        if worker is not None:
            return worker  # the common case: no timer, no task
        if self.state == "failed" or not self._ever_ready:  # at start /health says 503 too
            raise self._not_ready()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout
        while (worker := self._pick()) is None:
            waiter = loop.create_future()
            self._waiting.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise HTTPError(503, "busy", f"no worker was free within {self.config.timeout:g} s") from None
        return worker

    def _not_ready(self) -> HTTPError:
        return HTTPError(
            503,
            "not_ready",
            "the service is starting" if self.state == "starting" else "the notebook's setup failed",
            **({"cause": self.setup_error} if self.setup_error else {}),
        )

    def expect(self) -> None:
        """A request for ``invoke`` has come in: wake the worker that will take it while it is checked."""
        if self._spin and self._inflight == 0 and self._calm >= _CALM:
            worker = self._pick()
            if worker is not None:
                worker.poke(self._spin)

    async def invoke(self, values: dict[str, Any]) -> dict[str, Any]:
        self._inflight += 1
        # Polling only pays while requests come one at a time: under load it takes the loop from the others.
        self._calm = self._calm + 1 if self._inflight == 1 else 0
        try:
            while True:
                worker = await self._take()
                alone = self._inflight == 1 and not worker.pending
                started = time.perf_counter()
                call = worker.submit({"op": "invoke", "values": values}, self.config.timeout)
                if alone and self._calm >= _CALM and self._service < self._spin:
                    worker.poll(call, self._spin)
                try:
                    reply = await call.answer
                except NotStarted:
                    continue  # its worker ended while running another request: this one goes to the next
                except OutputTooLarge as e:
                    raise HTTPError(500, "output_error", str(e)) from None
                except WorkerDied:
                    code = await worker.proc.wait()
                    if call.timed_out:  # stuck where SIGINT could not reach it, so killed
                        raise timeout_error(self.config) from None
                    raise HTTPError(
                        500,
                        "worker_died",
                        f"the notebook's process exited with code {code} while running the request; "
                        "it is being restarted",
                    ) from None
                if alone:
                    took = min(time.perf_counter() - started, 4 * self._spin)
                    self._service += (took - self._service) * 0.25
                return answer(msgspec.json.decode(reply), self._outputs, self.config)
        finally:
            self._inflight -= 1


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
