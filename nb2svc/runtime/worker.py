"""The process that holds a serving notebook's state: setup once, then one request at a time.

Started by :mod:`nb2svc.runtime.serving` as ``python -m nb2svc.runtime.worker``. It speaks
newline-delimited JSON on its original stdin/stdout; the notebook's own prints go to stderr,
so they reach the service's log and cannot corrupt the protocol. A crash here (``os._exit``,
a segfault in a C extension) ends this process only: the service answers 500 and starts a
new one.

Parameter values arrive as JSON and are bound into the namespace as Python objects; they are
never pasted into source.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import CodeType, TracebackType
from typing import IO, Any

from .errors import is_invalid_input
from .outputs import NotJSONError, to_jsonable

Message = dict[str, Any]
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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

        os.environ.setdefault("MPLBACKEND", "Agg")
        self.shell = InteractiveShell.instance()
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


def serve(read: IO[bytes], write: Callable[[Message], None]) -> None:
    session: Session | None = None
    while True:
        try:
            line = read.readline()
        except KeyboardInterrupt:
            continue  # a timeout's SIGINT that landed just after the answer went out
        if not line:
            return
        msg = json.loads(line)
        if msg["op"] == "setup":
            session = Session(msg["plan"])
            write(session.setup())
        elif msg["op"] == "invoke" and session is not None:
            try:
                write(session.invoke(msg["values"]))
            except KeyboardInterrupt as e:  # the timeout landed between cells
                write({"ok": False, "timeout": True, "error": _error(0, e)})


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
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # the notebook's prints go to the log, never into the protocol
    sys.stdout = os.fdopen(1, "w", buffering=1)

    def write(msg: Message) -> None:
        try:
            line = json.dumps(msg, allow_nan=False).encode()
        except (ValueError, TypeError) as e:  # outputs are checked already; this keeps the protocol whole
            line = json.dumps({"ok": False, "output_error": f"the outputs could not be written as JSON: {e}"}).encode()
        proto_out.write(line + b"\n")
        proto_out.flush()

    try:
        serve(proto_in, write)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
