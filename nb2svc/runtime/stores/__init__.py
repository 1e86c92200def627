"""Where a training service keeps its runs (RunStore), its queue (Queue) and their files (Storage).

Two of each: embedded (one process: records on its disk, the queue in its memory; the default) and shared
(``NB2SVC_QUEUE_URL=redis://…``: every replica reads and writes one set of records and takes work from one
queue; files on a volume all replicas mount, or in object storage, ``NB2SVC_STORAGE_URL=s3://…``).
The executor (training.py) is written once against these interfaces.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..config import Config
from ..runs import Run

__all__ = ["Queue", "RunStore", "Storage", "StoreUnavailable", "open_stores"]

Problem = dict[str, str]  # {"error", "message", "hint"}: why runs cannot be kept, as /health shows it


class StoreUnavailable(Exception):
    """The shared store cannot be reached (Redis down): the request is a 503, the worker retries."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem["message"])
        self.problem = problem


class RunStore(Protocol):
    """Run records. ``transition`` is the one write that races (a cancel against a start, a reaper against
    a finish): it writes ``run`` only while the stored record's status is still ``expected`` (``""``: any)."""

    async def new(self, parameters: dict[str, Any]) -> Run: ...
    async def get(self, run_id: str) -> Run | None: ...
    async def transition(self, run: Run, expected: str) -> bool: ...
    async def page(self, limit: int, before: tuple[str, str] | None) -> list[Run]: ...
    async def delete(self, run: Run) -> None: ...
    def counts(self) -> dict[str, int]: ...


class Queue(Protocol):
    """Run ids waiting for a worker. ``take`` leases the id to this instance until ``ack``: if the instance
    dies first, the shared queue's reaper hands it to another (queued) or fails it (running)."""

    async def put(self, run_id: str) -> None: ...
    async def waiting(self) -> int: ...
    async def take(self) -> str: ...
    async def ack(self, run_id: str) -> None: ...
    async def remove(self, run_id: str) -> None: ...
    async def request_cancel(self, run_id: str) -> None: ...


class Storage(Protocol):
    """A run's files: executed notebook and artifacts. A run executes in ``work_dir`` (a folder on this
    instance); ``publish`` puts what it wrote where every instance reads it."""

    def problem(self) -> Problem | None: ...
    def work_dir(self, run_id: str) -> Path: ...
    async def publish(self, run_id: str) -> None: ...
    async def notebook(self, run_id: str) -> Path | None: ...
    async def artifact(self, run_id: str, rel: str) -> Path | None: ...
    async def delete(self, run_id: str) -> None: ...


class Lifecycle(Protocol):
    """What the executor starts and stops; ``problem`` is what /health shows while runs cannot be kept."""

    async def start(self, on_cancel: Callable[[str], None], running: Callable[[], list[str]]) -> None: ...
    async def close(self) -> None: ...
    def problem(self) -> Problem | None: ...
    @property
    def shared(self) -> bool: ...


def open_stores(config: Config, service: str) -> tuple[RunStore, Queue, Lifecycle, Storage]:
    """The stores ``config`` names; redis-py and boto3 are imported only when they are configured."""
    storage: Storage
    if config.storage_url:
        from .s3 import S3Storage

        storage = S3Storage(config.storage_url, config.runs_dir, config.s3_cache_bytes)
    else:
        from .disk import DiskStorage

        storage = DiskStorage(config.runs_dir)
    if config.queue_url:
        from .redis import RedisStore

        shared = RedisStore(config.queue_url, service, config.instance, config.lease_s)
        return shared, shared, shared, storage
    from .embedded import EmbeddedStore

    embedded = EmbeddedStore(config.runs_dir)
    return embedded, embedded, embedded, storage
