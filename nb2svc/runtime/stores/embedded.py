"""The embedded store: run records in ``NB2SVC_RUNS_DIR/{id}/run.json`` and in memory, the queue in memory.

One process owns it (``nb2svc serve``, one container). A restart finds the records again: runs that were
running are failed (``interrupted``), queued runs queue again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..runs import Run, new_id, now
from . import Problem
from .disk import writable_problem

log = logging.getLogger("nb2svc.runs")


class EmbeddedStore:
    """RunStore, Queue and Lifecycle of one process."""

    shared = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self._problem = writable_problem(root)
        self.runs: dict[str, Run] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()

    # Lifecycle
    async def start(self, on_cancel: Callable[[str], None], running: Callable[[], list[str]]) -> None:
        if self._problem:
            return
        for run in self._load_all():
            self.runs[run.id] = run
            if run.status == "running":
                error = {"error": "interrupted", "message": "the service restarted during the run"}
                self._write(replace(run, status="failed", finished_at=now(), error=error))
            elif run.status == "queued":
                self._queue.put_nowait(run.id)

    async def close(self) -> None:
        return None

    def problem(self) -> Problem | None:
        return self._problem

    # RunStore
    async def new(self, parameters: dict[str, Any]) -> Run:
        run = Run(id=new_id(), status="queued", parameters=parameters, created_at=now())
        (self.root / run.id).mkdir()
        self._write(run)
        return run

    async def get(self, run_id: str) -> Run | None:
        return self.runs.get(run_id)

    async def transition(self, run: Run, expected: str) -> bool:
        current = self.runs.get(run.id)
        if current is None or (expected and current.status != expected):  # "": whatever it is
            return False
        self._write(run)
        return True

    async def page(self, limit: int, before: tuple[str, str] | None) -> list[Run]:
        runs = sorted(self.runs.values(), key=lambda r: r.order, reverse=True)
        if before is not None:
            runs = [r for r in runs if r.order < before]
        return runs[:limit]

    async def delete(self, run: Run) -> None:
        self.runs.pop(run.id, None)  # from here on, nothing writes its record again
        shutil.rmtree(self.root / run.id, ignore_errors=True)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for run in self.runs.values():
            out[run.status] = out.get(run.status, 0) + 1
        return out

    # Queue
    async def put(self, run_id: str) -> None:
        self._queue.put_nowait(run_id)

    async def waiting(self) -> int:
        return sum(1 for run in self.runs.values() if run.status == "queued")  # not the cancelled ones

    async def take(self) -> str:
        return await self._queue.get()

    async def ack(self, run_id: str) -> None:
        return None

    async def remove(self, run_id: str) -> None:
        return None  # the worker skips an id whose run is no longer queued

    async def request_cancel(self, run_id: str) -> None:
        return None  # every run executes here: the executor stops it itself

    def _write(self, run: Run) -> None:
        """Keep the record in memory whatever happens, then write it atomically (never half a record)."""
        self.runs[run.id] = run
        folder = self.root / run.id
        text = run.to_json()  # NaN is not JSON: a ValueError
        tmp = folder / "run.json.tmp"
        tmp.write_text(text)
        os.replace(tmp, folder / "run.json")

    def _load_all(self) -> list[Run]:
        runs = []
        for path in self.root.glob("*/run.json"):
            try:
                # An older version could write NaN or Infinity: not JSON, and no value the schema allows,
                # so such a record is left out (as null it would claim values the run never had).
                runs.append(Run.from_json(path.read_text()))
            except (OSError, ValueError, TypeError) as e:
                log.warning("%s is left out: %s; fix or remove it", path, e)
        return sorted(runs, key=lambda r: r.created_at)
