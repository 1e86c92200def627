"""Training: each run executes the whole notebook through papermill, on a kernel started ahead.

papermill starts a fresh kernel per run by default (seconds); here a small pool keeps kernels
started (kernels.py), so a run begins at once and still gets a kernel of its own (never reused).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import nbformat
import papermill
from jupyter_client.manager import AsyncKernelManager
from nbformat.v4 import new_code_cell
from papermill.exceptions import PapermillExecutionError

from ..notebook import strip_pip_lines
from ..spec import ServiceSpec
from .config import Config
from .errors import HTTPError, notebook_error
from .kernels import KERNEL_NAME, KernelPool, KernelStartError, kill, shutdown
from .outputs import OUTPUTS_MIME, recorded_outputs
from .references import FetchError, References
from .run_notebook import COLLECT, PRELUDE, PRELUDE_TAG, parameters_source  # registers the "nb2svc" papermill engine
from .runs import Run, now
from .stores import StoreUnavailable, open_stores
from .stores.disk import list_files
from .validation import OutputChecker

log = logging.getLogger("nb2svc.training")
T = TypeVar("T")
POLL_S = 0.2  # how often a wait re-reads a shared record (a run on another replica ends unseen here)


class TrainingExecutor:
    """Runs from the queue, at most ``NB2SVC_MAX_RUNS`` at once on this instance, each on a kernel of its own."""

    def __init__(self, spec: ServiceSpec, config: Config) -> None:
        self.spec = spec
        self.config = config
        self.store, self.queue, self.lifecycle, self.files = open_stores(config, spec.name)
        self.references = References(spec, config)
        self._problem = self.files.problem() or self.lifecycle.problem()
        if self._problem:  # /health says so at once, not a 500 on the first run
            log.error("%s; %s", self._problem["message"], self._problem["hint"])
        self._running: dict[str, tuple[AsyncKernelManager, list[str]]] = {}  # id → kernel, [stop reason]
        self._changed: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ending: set[asyncio.Future[None]] = set()  # kernels of ended runs, shutting down
        self._pool = KernelPool(spec.notebook.parent, config.warm_kernels)
        self._outputs = OutputChecker(spec)
        self._nb = self._template()

    @property
    def state(self) -> str:
        return "failed" if self.setup_error else "ok"  # a training service has no setup of its own

    @property
    def setup_error(self) -> dict[str, Any] | None:
        return self._problem or self.lifecycle.problem()

    async def start(self) -> None:
        if self._problem:
            return
        await self.lifecycle.start(self._cancelled_elsewhere, lambda: list(self._running))
        for _ in range(self.config.max_runs):
            self._tasks.append(asyncio.ensure_future(self._work()))
        self._refill()

    def _refill(self) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.ensure_future(self._pool.fill()))

    async def close(self) -> None:
        for run_id in list(self._running):
            self._stop(run_id, "the service stopped during the run")
        for _ in range(100):  # the stopped runs save their end (a few seconds at most)
            if not self._running:
                break
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._ending, return_exceptions=True)
        await self.lifecycle.close()
        await self._pool.close()

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    async def get(self, run_id: str) -> Run:
        with _answerable():
            run = await self.store.get(run_id)
        if run is None:
            raise HTTPError(404, "not_found", f"no run {run_id!r}")
        return run

    async def page(self, limit: int, before: tuple[str, str] | None) -> list[Run]:
        """Up to ``limit`` runs older than ``before`` (created_at, id), newest first."""
        if self._problem:
            return []
        with _answerable():
            return await self.store.page(limit, before)

    async def submit(self, values: dict[str, Any]) -> Run:
        if self._problem:
            raise HTTPError(503, "not_ready", "the service cannot keep runs", cause=self._problem)
        await self.references.check(values)  # a reference that cannot be fetched is a 422 here, not a failed run
        with _answerable():
            queued = await self.queue.waiting()
            if queued >= self.config.max_queue:
                raise HTTPError(503, "queue_full", f"{queued} runs are already queued; try again later")
            run = await self.store.new(values)
            await self.queue.put(run.id)
        return run

    async def wait(self, run_id: str, seconds: float) -> Run:
        deadline = time.monotonic() + seconds
        run = await self.get(run_id)
        while not run.done and (left := deadline - time.monotonic()) > 0:
            event = self._changed.setdefault(run_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, POLL_S) if self.lifecycle.shared else left)
            run = await self.get(run_id)
        return run

    async def cancel(self, run_id: str) -> Run:
        run = await self.get(run_id)
        if run.done:
            raise HTTPError(409, "already_finished", f"run {run_id} has already {run.status}")
        with _answerable():
            if run.status == "queued":  # or its kernel is still starting: the worker sees the status and lets it go
                if await self._transition(replace(run, status="cancelled", finished_at=now()), "queued"):
                    await self.queue.remove(run.id)
                    return run
                run = await self.get(run_id)  # it started meanwhile
            if run.status == "running":
                if run.id in self._running:
                    self._stop(run.id, "cancelled")
                else:  # executing on another replica: it polls for this
                    await self.queue.request_cancel(run.id)
        return run

    async def delete(self, run_id: str) -> Run:
        """Cancel the run if needed, then forget it and remove its files."""
        run = await self.get(run_id)
        if not run.done:
            with contextlib.suppress(HTTPError):  # it ended meanwhile
                await self.cancel(run_id)
            run = await self.wait(run_id, 10)
        with _answerable():
            await self.store.delete(run)  # from here on, nothing writes its record again
        await self.files.delete(run_id)
        return run

    def _cancelled_elsewhere(self, run_id: str) -> None:
        if run_id in self._running and not self._running[run_id][1]:
            self._stop(run_id, "cancelled")

    def _stop(self, run_id: str, reason: str) -> None:
        km, reasons = self._running[run_id]
        reasons.append(reason)
        kill(km)

    async def _transition(self, run: Run, expected: str) -> bool:
        done = await self.store.transition(run, expected)
        if done and run.done:
            event = self._changed.pop(run.id, None)
            if event:
                event.set()
        return done

    async def _finish(self, run: Run, expected: str) -> None:
        """Write the run's end; a store that cannot be reached is retried until it is back (no run lost)."""
        try:
            for attempt in range(2):
                try:
                    await self._retrying(functools.partial(self._transition, run, expected))
                    return
                except (OSError, ValueError) as e:  # its folder removed, a full disk; a value JSON cannot hold
                    where = self.files.work_dir(run.id)
                    log.error("run %s: its record could not be saved in %s: %s", run.id, where, e)
                    if attempt:
                        return
                    error = _error("storage_error", f"the run's record could not be saved: {e}")
                    # kept (in memory at least), failed with the reason, whether or not this one saves
                    run, expected = replace(run, status="failed", error=error), ""
        finally:  # whatever was saved, a caller waiting on the run (?wait=) reads it now, not at its deadline
            event = self._changed.pop(run.id, None)
            if event:
                event.set()

    async def _retrying(self, op: Callable[[], Awaitable[T]]) -> T:
        while True:
            try:
                return await op()
            except StoreUnavailable:
                await asyncio.sleep(1)

    async def _work(self) -> None:
        while True:
            run_id = await self.queue.take()
            try:
                run = await self._retrying(functools.partial(self.store.get, run_id))
                if run is not None and run.status == "queued":  # else cancelled or deleted while it waited
                    await self._run(run)
            except Exception as e:  # one run's failure must never stop the queue
                log.exception("run %s: nb2svc failed running it", run_id)
                with contextlib.suppress(Exception):
                    run = await self.store.get(run_id)
                    if run is not None and not run.done:
                        error = _error("internal_error", f"nb2svc failed running it: {e}")
                        await self._finish(replace(run, status="failed", finished_at=now(), error=error), run.status)
            finally:
                await self.queue.ack(run_id)

    async def _run(self, run: Run) -> None:
        try:
            km = await self._pool.take()
        except Exception as e:  # no kernel at all: the run cannot start
            error = _error("kernel_failed", f"could not start a kernel: {e}")
            await self._finish(replace(run, status="failed", finished_at=now(), error=error), "queued")
            return
        reasons: list[str] = []
        self._running[run.id] = (km, reasons)
        try:
            work = self.files.work_dir(run.id)
            started = replace(run, status="running", started_at=now(), instance=self.config.instance)
            try:
                (work / "artifacts").mkdir(parents=True, exist_ok=True)
                if not await self._retrying(lambda: self._transition(started, "queued")):
                    return  # cancelled (or deleted) while its kernel started
            except (OSError, ValueError) as e:
                log.error("run %s: its record could not be saved in %s: %s", run.id, work, e)
                error = _error("storage_error", f"the run's record could not be saved: {e}")
                await self._finish(replace(started, status="failed", finished_at=now(), error=error), "")
                return
            timer = asyncio.get_running_loop().call_later(self.config.timeout, self._stop, run.id, "timeout")
            t0 = time.monotonic()
            try:
                status, fields = await self._execute(started, km, reasons)
            finally:
                timer.cancel()
            ended = replace(started, status=status, finished_at=now(), duration_s=round(time.monotonic() - t0, 3))
            ended.artifacts = list_files(work / "artifacts")
            for key, value in fields.items():
                setattr(ended, key, value)
            try:
                await self.files.publish(run.id)
            except Exception as e:  # the bucket refused, or cannot be reached
                log.error("run %s: its files could not be stored: %s", run.id, e)
                ended.status = "failed"
                ended.error = _error("storage_error", f"the run's files could not be stored: {e}")
            await self._finish(ended, "running")
            if await self._retrying(lambda: self.store.get(run.id)) is None:
                await self.files.delete(run.id)  # deleted during the run: its files go too
        finally:
            self._running.pop(run.id, None)
            # off the queue's path (~0.1 s): the next run starts on a warm kernel meanwhile
            ending = asyncio.ensure_future(shutdown(km))
            self._ending.add(ending)
            ending.add_done_callback(self._ending.discard)
            self._refill()

    def _template(self) -> str:
        """The notebook as every run runs it, less the parameters: pip lines commented, nb2svc's cells added."""
        nb = nbformat.read(self.spec.notebook, as_version=4)
        nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
        cells = []
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                cell.source = strip_pip_lines(cell.get("source", ""))
            cell.setdefault("metadata", {})["nb2svc"] = {"cell": index + 1}  # the user's cell number
            cells.append(cell)
        collect = COLLECT.format(mime=json.dumps(OUTPUTS_MIME), names=json.dumps([o.name for o in self.spec.outputs]))
        nb.cells = [new_code_cell(PRELUDE, metadata={"tags": [PRELUDE_TAG]}), *cells]
        if self.spec.outputs:
            nb.cells.append(new_code_cell(collect, metadata={"tags": ["nb2svc-outputs"]}))
        return json.dumps(nb)

    def _prepare(self, run: Run, values: dict[str, Any], fetched: Mapping[str, str]) -> Path:
        """Write the notebook as this run runs it: the template with the run's parameters cell after the user's."""
        nb = json.loads(self._nb)
        names = [p.name for p in self.spec.parameters]
        injected = new_code_cell(parameters_source(values, names, fetched), metadata={"tags": ["injected-parameters"]})
        nb["cells"].insert(self.spec.parameters_cell.index + 2, injected)  # + 1 for the prelude
        nb["metadata"].setdefault("papermill", {})["parameters"] = run.parameters
        nb["metadata"].setdefault("nb2svc", {})["run"] = run.id
        path = self.files.work_dir(run.id) / "input.ipynb"
        # as nbformat writes it, without validating again what the template and parameters_source made valid
        path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    async def _execute(self, run: Run, km: AsyncKernelManager, reasons: list[str]) -> tuple[str, dict[str, Any]]:
        work = self.files.work_dir(run.id)
        try:  # the run's inputs by reference, into its own folder on this instance
            values, fetched = await self.references.fetch(run.parameters, work / "inputs")
        except FetchError as e:
            return "failed", {"error": _error("reference_error", str(e))}
        return await asyncio.to_thread(self._papermill, run, km, reasons, values, fetched)

    def _papermill(
        self, run: Run, km: AsyncKernelManager, reasons: list[str], values: dict[str, Any], fetched: Mapping[str, str]
    ) -> tuple[str, dict[str, Any]]:
        out = self.files.work_dir(run.id) / "notebook.ipynb"
        failures: list[tuple[Mapping[str, Any], Any]] = []
        try:
            papermill.execute_notebook(
                self._prepare(run, values, fetched),
                out,
                kernel_name=KERNEL_NAME,
                engine_name="nb2svc",
                km=km,
                progress_bar=False,
                log_output=False,
                nb2svc_failures=failures,
                nb2svc_artifacts=(self.files.work_dir(run.id) / "artifacts").resolve(),
            )
        except PapermillExecutionError as e:
            return "failed", {"error": self._cell_error(e, failures)}
        except KernelStartError as e:  # killed by cancel or timeout while it started, or a broken kernel
            if reasons:
                return self._stopped(reasons[0])
            return "failed", {"error": _error("kernel_failed", f"the kernel did not start: {e}")}
        except Exception as e:  # the kernel died: killed by cancel or timeout, or crashed
            if reasons:
                return self._stopped(reasons[0])
            if not self.files.work_dir(run.id).is_dir():
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


@contextlib.contextmanager
def _answerable() -> Iterator[None]:
    """The shared store out of reach: a 503 naming the cause (the caller retries), never a 500."""
    try:
        yield
    except StoreUnavailable as e:
        raise HTTPError(503, "queue_unavailable", f"{e}; retry later", cause=e.problem) from None
