"""Training: each run executes the whole notebook through papermill, on a kernel started ahead.

papermill starts a fresh kernel per run by default (seconds); here a small pool keeps kernels
started, so a run begins at once and still gets a kernel of its own (never reused).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import nbformat
import papermill
from jupyter_client.manager import AsyncKernelManager
from nbformat.v4 import new_code_cell
from papermill.exceptions import PapermillExecutionError

from ..notebook import strip_pip_lines
from ..spec import ServiceSpec
from .config import Config
from .errors import HTTPError, notebook_error
from .outputs import OUTPUTS_MIME, recorded_outputs
from .runs import Run, RunStore, now
from .validation import OutputChecker

log = logging.getLogger("nb2svc.training")

# The injected cell reads the values from the run's file: values stay data, never source.
# Only paths nb2svc made are written into it, JSON-quoted.
_PRELUDE = """\
# Set by nb2svc before the notebook's own cells: where this run's artifacts go.
import os as _nb2svc_os
_nb2svc_os.environ["NB2SVC_ARTIFACTS"] = {artifacts}
del _nb2svc_os"""

_INJECT = """\
# Parameters injected by nb2svc: read from the run's parameters file as data.
import json as _nb2svc_json
with open({parameters}) as _nb2svc_file:
    globals().update(_nb2svc_json.load(_nb2svc_file))
del _nb2svc_json, _nb2svc_file"""

_COLLECT = """\
# Outputs collected by nb2svc.
import json as _nb2svc_json
from IPython.display import display as _nb2svc_display

def _nb2svc_plain(value):
    for method in ("tolist", "item"):
        if callable(getattr(value, method, None)):
            return getattr(value, method)()
    raise TypeError(f"a value of type {{type(value).__name__}} has no JSON form")

_nb2svc_display({{{mime}: _nb2svc_json.loads(_nb2svc_json.dumps(
    {{_n: globals()[_n] for _n in {names} if _n in globals()}}, default=_nb2svc_plain, allow_nan=False))}}, raw=True)
del _nb2svc_json, _nb2svc_display, _nb2svc_plain"""


class KernelPool:
    """Kernels started ahead of need; each is handed out once and shut down after its run.

    Kernels are async-managed on the service's event loop; papermill drives them from a worker
    thread through nbclient's async client, which notices a killed kernel (the blocking client
    would wait on it forever).
    """

    def __init__(self, kernel_name: str, cwd: Path, size: int) -> None:
        self.kernel_name = kernel_name
        self.cwd = cwd
        self.size = size
        self._ready: list[AsyncKernelManager] = []
        self._starting = 0

    async def _start(self) -> AsyncKernelManager:
        km = AsyncKernelManager(kernel_name=self.kernel_name)
        await km.start_kernel(cwd=str(self.cwd))
        return km

    async def fill(self) -> None:
        while len(self._ready) + self._starting < self.size:
            self._starting += 1
            try:
                km = await self._start()
            except Exception:  # a broken kernelspec: each run then starts its own and reports why
                log.exception("could not start a warm kernel")
                return
            finally:
                self._starting -= 1
            self._ready.append(km)

    async def take(self) -> AsyncKernelManager:
        if self._ready:
            return self._ready.pop(0)
        return await self._start()

    async def close(self) -> None:
        kms, self._ready = self._ready, []
        for km in kms:
            await shutdown(km)


async def shutdown(km: AsyncKernelManager) -> None:
    with contextlib.suppress(Exception):  # already dead, or its files already gone
        await km.shutdown_kernel(now=True)


def _kill(km: AsyncKernelManager) -> None:
    """Kill the kernel and what it started: nbclient then stops the run with DeadKernelError."""
    pgid = getattr(km.provisioner, "pgid", None)
    pid = getattr(km.provisioner, "pid", None)
    with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
        if pgid:
            os.killpg(pgid, signal.SIGKILL)
        elif pid:
            os.kill(pid, signal.SIGKILL)


class TrainingExecutor:
    def __init__(self, spec: ServiceSpec, config: Config) -> None:
        self.spec = spec
        self.config = config
        self.state = "ok"  # a training service has no setup of its own
        self.setup_error: dict[str, Any] | None = None
        self.store = RunStore(config.runs_dir)
        problem = self.store.problem()
        if problem:  # /health says so at once, not a 500 on the first run
            log.error("%s; %s", problem["message"], problem["hint"])
            self.state = "failed"
            self.setup_error = problem
        self.runs: dict[str, Run] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._running: dict[str, tuple[AsyncKernelManager, list[str]]] = {}  # id → kernel, [stop reason]
        self._done: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._pool = KernelPool(spec.kernel_name, spec.notebook.parent, config.warm_kernels)
        self._outputs = OutputChecker(spec)
        self._nb = nbformat.read(spec.notebook, as_version=4)
        # The notebook as run: an index into the user's cells, or the name of a cell nb2svc adds.
        p = spec.parameters_cell.index
        cells = range(len(self._nb.cells))
        self._layout: list[int | str] = ["prelude", *cells[: p + 1], "inject", *cells[p + 1 :]]
        if spec.outputs:
            self._layout.append("collect")

    async def start(self) -> None:
        if self.state == "failed":
            return
        for run in self.store.load_all():
            if run.status == "running":
                self._finish(run, "failed", error=_error("interrupted", "the service restarted during the run"))
            self.runs[run.id] = run
            if run.status == "queued":
                self._queue.put_nowait(run.id)
        for _ in range(self.config.max_runs):
            self._tasks.append(asyncio.ensure_future(self._work()))
        self._refill()

    def _refill(self) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.ensure_future(self._pool.fill()))

    async def close(self) -> None:
        for run_id in list(self._running):
            self._stop(run_id, "the service stopped during the run")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._pool.close()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for run in self.runs.values():
            out[run.status] = out.get(run.status, 0) + 1
        return out

    def get(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise HTTPError(404, "not_found", f"no run {run_id!r}")
        return run

    def submit(self, values: dict[str, Any]) -> Run:
        if self.state == "failed":
            raise HTTPError(503, "not_ready", "the service cannot keep runs", cause=self.setup_error)
        if self._queue.qsize() >= self.config.max_queue:
            raise HTTPError(503, "queue_full", f"{self._queue.qsize()} runs are already queued; try again later")
        run = self.store.new(values)
        self.runs[run.id] = run
        self._queue.put_nowait(run.id)
        return run

    async def wait(self, run_id: str, seconds: float) -> Run:
        run = self.get(run_id)
        if not run.done:
            event = self._done.setdefault(run_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)
        return run

    def cancel(self, run_id: str) -> Run:
        run = self.get(run_id)
        if run.done:
            raise HTTPError(409, "already_finished", f"run {run_id} has already {run.status}")
        if run.id in self._running:
            self._stop(run.id, "cancelled")
        else:
            self._finish(run, "cancelled")
        return run

    def _stop(self, run_id: str, reason: str) -> None:
        km, reasons = self._running[run_id]
        reasons.append(reason)
        _kill(km)

    def _finish(self, run: Run, status: str, **fields: Any) -> None:
        run.status = status
        run.finished_at = now()
        for key, value in fields.items():
            setattr(run, key, value)
        self.store.save(run)
        event = self._done.pop(run.id, None)
        if event:
            event.set()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            run = self.runs[await self._queue.get()]
            if run.status != "queued":
                continue  # cancelled while it waited
            try:
                km = await self._pool.take()
            except Exception as e:  # no kernel at all: the run cannot start
                self._finish(run, "failed", error=_error("kernel_failed", f"could not start a kernel: {e}"))
                continue
            reasons: list[str] = []
            self._running[run.id] = (km, reasons)
            run.status, run.started_at = "running", now()
            self.store.save(run)
            timer = loop.call_later(self.config.timeout, self._stop, run.id, "timeout")
            started = time.monotonic()
            try:
                status, fields = await asyncio.to_thread(self._execute, run, km, reasons)
            finally:
                timer.cancel()
                del self._running[run.id]
                await shutdown(km)
                self._refill()
            self._finish(run, status, duration_s=round(time.monotonic() - started, 3), **fields)

    def _prepare(self, run: Run) -> Path:
        """Write the notebook as it will run: pip lines commented, nb2svc's cells added (see `_layout`)."""
        nb = copy.deepcopy(self._nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.source = strip_pip_lines(cell.source)
        # Only paths nb2svc made are written into the cells' source, JSON-quoted; the values stay in a file.
        prelude = _PRELUDE.format(artifacts=json.dumps(str(self.store.artifacts_dir(run.id).resolve())))
        inject = _INJECT.format(parameters=json.dumps(str((self.store.dir(run.id) / "parameters.json").resolve())))
        added = {
            "prelude": new_code_cell(prelude, metadata={"tags": ["nb2svc-prelude"]}),
            "inject": new_code_cell(inject, metadata={"tags": ["injected-parameters"]}),
            "collect": new_code_cell(
                _COLLECT.format(mime=json.dumps(OUTPUTS_MIME), names=json.dumps([o.name for o in self.spec.outputs])),
                metadata={"tags": ["nb2svc-outputs"]},
            ),
        }
        nb.cells = [nb.cells[slot] if isinstance(slot, int) else added[slot] for slot in self._layout]
        nb.metadata.setdefault("papermill", {})["parameters"] = run.parameters
        nb.metadata.setdefault("nb2svc", {})["run"] = run.id
        path = self.store.dir(run.id) / "input.ipynb"
        nbformat.write(nb, path)
        return path

    def _execute(self, run: Run, km: AsyncKernelManager, reasons: list[str]) -> tuple[str, dict[str, Any]]:
        out = self.store.notebook(run.id)
        try:
            papermill.execute_notebook(
                self._prepare(run), out, kernel_name=self.spec.kernel_name, km=km, progress_bar=False, log_output=False
            )
        except PapermillExecutionError as e:
            slot = self._layout[e.cell_index] if e.cell_index < len(self._layout) else None
            if slot == "collect":
                return "failed", {"error": _error("output_error", f"the outputs could not be recorded: {e.evalue}")}
            if not isinstance(slot, int):
                return "failed", {"error": _error("internal_error", f"nb2svc's own cell raised {e.ename}: {e.evalue}")}
            err = notebook_error(slot + 1, e.ename, e.evalue, list(e.traceback), self.config.debug).body
            return "failed", {"error": err}
        except Exception as e:  # the kernel died: killed by cancel or timeout, or crashed
            if reasons:
                return self._stopped(reasons[0])
            return "failed", {"error": _error("kernel_died", f"the notebook's kernel stopped: {e}")}
        if reasons:  # stopped just as the last cell ended
            return self._stopped(reasons[0])
        outputs = recorded_outputs(nbformat.read(out, as_version=4))
        problems = self._outputs.problems(outputs)
        if problems:
            return "failed", {"outputs": outputs, "error": _error("output_error", problems)}
        return "succeeded", {"outputs": outputs}

    def _stopped(self, reason: str) -> tuple[str, dict[str, Any]]:
        if reason == "cancelled":
            return "cancelled", {}
        if reason == "timeout":
            return "failed", {"error": _error("timeout", f"the run did not finish within {self.config.timeout:g} s")}
        return "failed", {"error": _error("interrupted", reason)}


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": code, "message": message}
