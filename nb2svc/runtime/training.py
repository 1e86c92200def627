"""Training: each run executes the whole notebook through papermill, on a kernel started ahead.

papermill starts a fresh kernel per run by default (seconds); here a small pool keeps kernels
started (kernels.py), so a run begins at once and still gets a kernel of its own (never reused).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import copy
import json
import logging
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import nbformat
import papermill
from jupyter_client.manager import AsyncKernelManager
from nbformat.v4 import new_code_cell
from papermill.engines import NBClientEngine, papermill_engines
from papermill.exceptions import PapermillExecutionError

from ..notebook import strip_pip_lines
from ..spec import ServiceSpec
from .config import Config
from .errors import HTTPError, notebook_error
from .kernels import KERNEL_NAME, KernelPool, kill, point_artifacts, shutdown
from .outputs import OUTPUTS_MIME, recorded_outputs
from .runs import Run, RunStore, now
from .validation import OutputChecker

log = logging.getLogger("nb2svc.training")

# The executed notebook must re-run anywhere: the service sets NB2SVC_ARTIFACTS in the kernel
# before this cell runs (see `kernels.point_artifacts`); elsewhere the artifacts go to ./artifacts.
_PRELUDE = """\
# Set by nb2svc: where the run's artifacts go (the service sets it per run; elsewhere ./artifacts).
import os as _nb2svc_os
_nb2svc_os.environ.setdefault("NB2SVC_ARTIFACTS", "artifacts")
del _nb2svc_os"""

_INJECT = "# Parameters injected by nb2svc: the values this run was started with."

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


def parameters_source(values: Mapping[str, Any], declared: Collection[str]) -> str:
    """The injected-parameters cell: one ``name = <literal>`` a value, checked to be data only."""
    lines = [_INJECT]
    for name, value in values.items():
        if name not in declared or not name.isidentifier():
            raise ValueError(f"{name!r} is not a declared parameter")
        lines.append(f"{name} = {python_literal(value)}")
    return "\n".join(lines)


def python_literal(value: Any) -> str:
    """``value`` (JSON data) as Python source that can only be that value: checked by reading it back."""
    text = repr(value)
    try:
        same = _strict(ast.literal_eval(text)) == _strict(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        same = False
    if not same:
        raise ValueError(f"{text[:60]} is not a JSON value")
    return text


def _strict(value: Any) -> str:
    """JSON that tells 1 from 1.0 and True (``==`` does not), and refuses NaN."""
    return json.dumps(value, sort_keys=True, allow_nan=False)


class _Engine(NBClientEngine):  # type: ignore[misc]  # papermill has no type hints
    """papermill's nbclient engine, noting which cell failed and why.

    papermill's error keeps only a cell *index* (into the notebook after it drops its own
    error-marker cells) and, for a cell with no error output (a failing ``%magic``), no name
    or message at all; the cell's metadata and the kernel's own error say both.
    """

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
        failures: list[tuple[Mapping[str, Any], Any]] = kwargs.pop("nb2svc_failures")
        plain = nb_man.cell_exception

        def cell_exception(cell: Any, cell_index: int | None = None, **kw: Any) -> None:
            failures.append((cell.get("metadata", {}), kw.get("exception")))
            plain(cell, cell_index=cell_index, **kw)

        nb_man.cell_exception = cell_exception
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


papermill_engines.register("nb2svc", _Engine)


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
        self._pool = KernelPool(spec.notebook.parent, config.warm_kernels)
        self._outputs = OutputChecker(spec)
        self._nb = nbformat.read(spec.notebook, as_version=4)

    async def start(self) -> None:
        if self.state == "failed":
            return
        for run in self.store.load_all():
            self.runs[run.id] = run
            if run.status == "running":
                self._finish(run, "failed", error=_error("interrupted", "the service restarted during the run"))
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
        queued = sum(1 for run in self.runs.values() if run.status == "queued")  # not the cancelled ones
        if queued >= self.config.max_queue:
            raise HTTPError(503, "queue_full", f"{queued} runs are already queued; try again later")
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
        else:  # queued, or its kernel is still starting: the worker sees the status and lets it go
            self._finish(run, "cancelled")
        return run

    async def delete(self, run_id: str) -> Run:
        """Cancel the run if needed, then forget it and remove its folder."""
        run = self.get(run_id)
        if not run.done:
            self.cancel(run_id)
            run = await self.wait(run_id, 10)
        self.runs.pop(run_id, None)  # from here on, nothing writes its record again
        self.store.delete(run_id)
        return run

    def _stop(self, run_id: str, reason: str) -> None:
        km, reasons = self._running[run_id]
        reasons.append(reason)
        kill(km)

    def _finish(self, run: Run, status: str, **fields: Any) -> None:
        run.status = status
        run.finished_at = now()
        for key, value in fields.items():
            setattr(run, key, value)
        if not self._save(run) and run.id in self.runs:
            run.status = "failed"  # kept in memory, with the reason, whether or not this one saves
            self._save(run)
        event = self._done.pop(run.id, None)
        if event:
            event.set()

    def _save(self, run: Run) -> bool:
        """Write the run's record; on failure, log it and record why on the run (in memory)."""
        if run.id not in self.runs:
            return True  # deleted: its folder is gone on purpose
        try:
            self.store.save(run)
        except (OSError, ValueError) as e:  # its folder removed, a full disk; a value JSON cannot hold
            log.error("run %s: its record could not be saved in %s: %s", run.id, self.store.dir(run.id), e)
            run.error = _error("storage_error", f"the run's record could not be saved: {e}")
            return False
        return True

    async def _work(self) -> None:
        while True:
            run = self.runs.get(await self._queue.get())
            if run is None or run.status != "queued":
                continue  # cancelled or deleted while it waited
            try:
                await self._run(run)
            except Exception as e:  # one run's failure must never stop the queue
                log.exception("run %s: nb2svc failed running it", run.id)
                if not run.done:
                    self._finish(run, "failed", error=_error("internal_error", f"nb2svc failed running it: {e}"))

    async def _run(self, run: Run) -> None:
        try:
            km = await self._pool.take()
        except Exception as e:  # no kernel at all: the run cannot start
            self._finish(run, "failed", error=_error("kernel_failed", f"could not start a kernel: {e}"))
            return
        try:
            if run.status != "queued":
                return  # cancelled while its kernel started
            reasons: list[str] = []
            self._running[run.id] = (km, reasons)
            run.status, run.started_at, run.instance = "running", now(), self.config.instance
            if not self._save(run):
                self._finish(run, "failed")
                return
            timer = asyncio.get_running_loop().call_later(self.config.timeout, self._stop, run.id, "timeout")
            started = time.monotonic()
            try:
                status, fields = await self._execute(run, km, reasons)
            finally:
                timer.cancel()
            self._finish(run, status, duration_s=round(time.monotonic() - started, 3), **fields)
        finally:
            self._running.pop(run.id, None)
            await shutdown(km)
            self._refill()

    def _prepare(self, run: Run) -> Path:
        """Write the notebook as it will run: pip lines commented, nb2svc's cells added, each cell numbered."""
        nb = copy.deepcopy(self._nb)
        nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
        cells = []
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                cell.source = strip_pip_lines(cell.get("source", ""))
            cell.setdefault("metadata", {})["nb2svc"] = {"cell": index + 1}  # the user's cell number
            cells.append(cell)
        p = self.spec.parameters_cell.index
        names = [p.name for p in self.spec.parameters]
        collect = _COLLECT.format(mime=json.dumps(OUTPUTS_MIME), names=json.dumps([o.name for o in self.spec.outputs]))
        nb.cells = [
            new_code_cell(_PRELUDE, metadata={"tags": ["nb2svc-prelude"]}),
            *cells[: p + 1],
            new_code_cell(parameters_source(run.parameters, names), metadata={"tags": ["injected-parameters"]}),
            *cells[p + 1 :],
        ]
        if self.spec.outputs:
            nb.cells.append(new_code_cell(collect, metadata={"tags": ["nb2svc-outputs"]}))
        nb.metadata.setdefault("papermill", {})["parameters"] = run.parameters
        nb.metadata.setdefault("nb2svc", {})["run"] = run.id
        path = self.store.dir(run.id) / "input.ipynb"
        nbformat.write(nb, path)
        return path

    async def _execute(self, run: Run, km: AsyncKernelManager, reasons: list[str]) -> tuple[str, dict[str, Any]]:
        try:
            await point_artifacts(km, self.store.artifacts_dir(run.id).resolve())
        except Exception as e:  # killed by cancel or timeout while it started, or a broken kernel
            if reasons:
                return self._stopped(reasons[0])
            return "failed", {"error": _error("kernel_failed", f"the kernel did not start: {e}")}
        return await asyncio.to_thread(self._papermill, run, km, reasons)

    def _papermill(self, run: Run, km: AsyncKernelManager, reasons: list[str]) -> tuple[str, dict[str, Any]]:
        out = self.store.notebook(run.id)
        failures: list[tuple[Mapping[str, Any], Any]] = []
        try:
            papermill.execute_notebook(
                self._prepare(run),
                out,
                kernel_name=KERNEL_NAME,
                engine_name="nb2svc",
                km=km,
                progress_bar=False,
                log_output=False,
                nb2svc_failures=failures,
            )
        except PapermillExecutionError as e:
            return "failed", {"error": self._cell_error(e, failures)}
        except Exception as e:  # the kernel died: killed by cancel or timeout, or crashed
            if reasons:
                return self._stopped(reasons[0])
            if not self.store.dir(run.id).is_dir():
                return "failed", {"error": _error("storage_error", f"the run's folder was removed during the run: {e}")}
            return "failed", {"error": _error("kernel_died", f"the notebook's kernel stopped: {e}")}
        if reasons:  # stopped just as the last cell ended
            return self._stopped(reasons[0])
        outputs = recorded_outputs(nbformat.read(out, as_version=4))
        problems = self._outputs.problems(outputs)
        if problems:
            return "failed", {"outputs": outputs, "error": _error("output_error", problems)}
        return "succeeded", {"outputs": outputs}

    def _cell_error(self, e: PapermillExecutionError, failures: list[tuple[Mapping[str, Any], Any]]) -> dict[str, Any]:
        """The failing cell in the user's numbering, and the kernel's own name and message for the error."""
        metadata, exc = failures[-1] if failures else ({}, None)
        ename = getattr(exc, "ename", None) or e.ename
        evalue = getattr(exc, "evalue", None) or e.evalue
        number = metadata.get("nb2svc", {}).get("cell")
        tags = metadata.get("tags", [])
        if "nb2svc-outputs" in tags:
            return _error("output_error", f"the outputs could not be recorded: {evalue}")
        if not isinstance(number, int):
            return _error("internal_error", f"nb2svc's own cell raised {ename}: {evalue}")
        return notebook_error(number, ename, evalue, list(e.traceback), self.config.debug).body

    def _stopped(self, reason: str) -> tuple[str, dict[str, Any]]:
        if reason == "cancelled":
            return "cancelled", {}
        if reason == "timeout":
            return "failed", {"error": _error("timeout", f"the run did not finish within {self.config.timeout:g} s")}
        return "failed", {"error": _error("interrupted", reason)}


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": code, "message": message}
