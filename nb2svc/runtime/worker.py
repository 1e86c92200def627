"""The process that holds a serving notebook's state: setup once, then one request at a time.

Started by :mod:`nb2svc.runtime.serving` as ``python -m nb2svc.runtime.worker``. It speaks
length-prefixed JSON messages (:class:`Pipe`) on its original stdin/stdout; the notebook's own
prints go to stderr, so they reach the service's log and cannot corrupt the protocol. A crash here (``os._exit``,
a segfault in a C extension) ends this process only: the service answers 500 and starts a
new one.

Parameter values arrive as JSON and are bound into the namespace as Python objects; they are
never pasted into source.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import sys
import threading
import time
import traceback
from types import CodeType, FrameType, TracebackType
from typing import Any

import msgspec

from .errors import is_invalid_input
from .outputs import NotJSONError, to_jsonable

Message = dict[str, Any]
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
HEADER = struct.Struct("<Q")  # each message: its length, then that many bytes of JSON
READ_SIZE = 1 << 16  # bytes asked of a pipe per read, at least: both ends use it
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _error(cell: int, exc: BaseException) -> Message:
    tb: TracebackType | None = exc.__traceback__
    if tb is not None:
        tb = tb.tb_next  # drop this module's exec frame: the user needs their cell's frames
    lines = traceback.format_exception(type(exc), exc, tb)
    error: Message = {"cell": cell, "ename": type(exc).__name__, "evalue": str(exc), "traceback": lines}
    if is_invalid_input(exc):
        field = getattr(exc, "field", None)
        error["invalid_input"] = {"field": field if isinstance(field, str) else None}
    return error


class Session:
    """The notebook's namespace inside this process."""

    def __init__(self, plan: Message) -> None:
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        os.environ.setdefault("MPLBACKEND", "Agg")
        config = Config()
        config.HistoryManager.enabled = False  # no SQLite file under $HOME (read-only in images), held in memory
        self.shell = InteractiveShell.instance(config=config)
        self.ns: dict[str, Any] = self.shell.user_ns
        self.plan = plan
        self.params_code: CodeType = compile("", "<parameters>", "exec")
        self.request_code: list[tuple[int, CodeType]] = []
        self.baseline: set[str] = set()

    def setup(self) -> Message:
        for cell in self.plan["setup"]:
            result = self.shell.run_cell(cell["source"], store_history=False, silent=True)
            exc = result.error_before_exec or result.error_in_exec
            if exc is not None:
                return {"ok": False, "error": _error(cell["number"], exc)}
        for cell in [self.plan["parameters"], *self.plan["request"]]:
            try:
                code = self._compile(cell)
            except SyntaxError as e:
                return {"ok": False, "error": _error(cell["number"], e)}
            if cell is self.plan["parameters"]:
                self.params_code = code
            else:
                self.request_code.append((cell["number"], code))
        self.baseline = set(self.ns)
        return {"ok": True}

    def _compile(self, cell: Message) -> CodeType:
        # IPython's transforms turn magics into calls, so `%time` or `!ls` still work per request.
        python = self.shell.transform_cell(cell["source"])
        return compile(python, f"<cell {cell['number']}>", "exec")

    def invoke(self, values: Message) -> Message:
        try:
            # The notebook's own defaults first, computed ones included; then the request's values.
            # Running the notebook's cells is this process's whole job.
            exec(self.params_code, self.ns)  # noqa: S102
            self.ns.update(values)
            for number, code in self.request_code:
                try:
                    exec(code, self.ns)  # noqa: S102  # the notebook's own cell
                except (Exception, KeyboardInterrupt, SystemExit) as e:
                    if isinstance(e, KeyboardInterrupt):
                        return {"ok": False, "timeout": True, "error": _error(number, e)}
                    return {"ok": False, "error": _error(number, e)}
            return self._outputs()
        finally:
            for name in set(self.ns) - self.baseline:  # no request sees another's values
                del self.ns[name]

    def _outputs(self) -> Message:
        outputs: Message = {}
        for name in self.plan["outputs"]:
            if name not in self.ns:
                return {"ok": False, "output_error": f"output {name!r} was not assigned"}
            try:
                outputs[name] = to_jsonable(self.ns[name])
            except NotJSONError as e:
                return {"ok": False, "output_error": f"output {name!r}: {e}"}
        return {"ok": True, "outputs": outputs}


class Pipe:
    """The worker's end of the protocol: blocking reads and writes of whole messages.

    An empty message is the server's word that a request is on its way: the worker then polls its pipe for
    up to ``poke_spin`` seconds instead of sleeping in ``read``. A process asleep is woken by the scheduler,
    which costs tens of microseconds on a virtual machine; one that polls sees the request at once. Between
    requests, with no word of one, it sleeps: an idle service burns no CPU.
    """

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.poke_spin = 0.0
        self._buf = bytearray()
        self._poll = select.poll()
        self._poll.register(rfd, select.POLLIN)

    def read(self) -> bytes | None:
        """The next message, or None at the end of the input (the server has gone)."""
        buf = self._buf
        while True:
            if len(buf) >= HEADER.size:
                (size,) = HEADER.unpack_from(buf)
                end = HEADER.size + size
                if len(buf) >= end:
                    with memoryview(buf) as view:
                        message = bytes(view[HEADER.size : end])
                    del buf[:end]
                    if message:
                        return message
                    if not buf:  # the word that a request is coming; it may have come along in this read
                        self._spin(time.perf_counter() + self.poke_spin)
                    continue
                want = end - len(buf)
            else:
                want = HEADER.size - len(buf)
            chunk = os.read(self.rfd, max(READ_SIZE, want))
            if not chunk:
                return None
            buf += chunk

    def _spin(self, deadline: float) -> None:
        poll = self._poll.poll
        clock = time.perf_counter
        while not poll(0) and clock() < deadline:
            pass

    def write(self, message: bytes) -> None:
        data = memoryview(HEADER.pack(len(message)) + message)
        while data:
            data = data[os.write(self.wfd, data) :]


class _Interruptible:
    """SIGINT stops the running request if the server named it on the control pipe; it is ignored otherwise.

    The server may have sent the next request already when the current one times out, so the signal
    alone does not say which request to stop: the control pipe carries the request's number, written
    before the signal. A Ctrl-C meant for the server's terminal stops nothing here.
    """

    def __init__(self, control: int) -> None:
        self.control = control
        self.current = -1  # the number of the running request; -1 between requests
        if control >= 0:
            os.set_blocking(control, False)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        named: set[int] = set()
        while self.control >= 0:
            try:
                data = os.read(self.control, HEADER.size * 64)
            except BlockingIOError:
                break
            if not data:
                break
            named.update(n for (n,) in HEADER.iter_unpack(data[: len(data) - len(data) % HEADER.size]))
        if self.current >= 0 and self.current in named:
            self.current = -1  # once: the handling below cannot be interrupted again
            raise KeyboardInterrupt


def encode(msg: Message, limit: int) -> bytes:
    try:
        # msgspec: 4-5x json's speed. It writes NaN as null, but to_jsonable refused NaN already; whatever msgspec
        # refuses goes to json, which writes it or says why.
        data = _encode(msg)
    except (OverflowError, TypeError):
        try:
            data = json.dumps(msg, allow_nan=False).encode()
        except (ValueError, TypeError) as e:  # outputs are checked already; this keeps the protocol whole
            error = f"the outputs could not be written as JSON: {e}"
            data = json.dumps({"ok": False, "output_error": error}).encode()
    if len(data) > limit:
        error = f"the outputs are larger than {limit} bytes (NB2SVC_MAX_OUTPUT)"
        data = json.dumps({"ok": False, "output_error": error}).encode()
    return data


def serve(pipe: Pipe, control: int = -1) -> None:
    session: Session | None = None
    guard = _Interruptible(control)
    limit = 1 << 62
    while True:
        line = pipe.read()
        if line is None:
            return
        msg = _decode(line)
        if msg["op"] == "setup":
            session = Session(msg["plan"])
            limit = msg.get("limit", limit)
            pipe.poke_spin = msg.get("poke_spin", 0.0)
            reply = session.setup()
        elif msg["op"] == "invoke" and session is not None:
            answered: Message | None = None
            try:
                guard.current = msg["seq"]
                answered = session.invoke(msg["values"])
                guard.current = -1
            except KeyboardInterrupt as e:  # the timeout landed between cells, or just after the last one
                answered = answered or {"ok": False, "timeout": True, "error": _error(0, e)}
            reply = answered
        else:
            continue
        pipe.write(encode(reply, limit))


def die_with_parent() -> None:
    """End this process when the server that started it ends, however it ends (``kill -9`` included).

    Linux: the kernel sends SIGKILL when the parent goes (prctl PR_SET_PDEATHSIG); elsewhere a thread
    watches for the parent's pid to change. A busy cell never keeps a core after its server is gone.
    """
    parent = int(os.environ.get("NB2SVC_PARENT_PID") or 0)
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0
        except (OSError, AttributeError):
            armed = False
    if parent and os.getppid() != parent:  # the server was already gone before the signal was armed
        os._exit(1)
    if not armed and parent:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1)
            os._exit(1)

        threading.Thread(target=watch, name="nb2svc-parent-watch", daemon=True).start()


def main() -> None:
    die_with_parent()
    rfd, wfd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # the notebook's prints go to the log, never into the protocol
    sys.stdout = os.fdopen(1, "w", buffering=1)
    serve(Pipe(rfd, wfd), int(os.environ.pop("NB2SVC_CONTROL_FD", "-1")))


if __name__ == "__main__":
    main()
