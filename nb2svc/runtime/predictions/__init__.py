"""The prediction log (SPEC section 8): what each ``POST /invoke`` answered, and the truth fed back later.

One small interface, :class:`PredictionLog`, with an adapter per store: ``sqlite:///PATH`` (embedded, the
default; :mod:`.sqlite`) and ``postgresql://...`` (shared by replicas; :mod:`.postgres`, which imports psycopg
only when such a URL is used). The serving runtime writes through :class:`~.recorder.Recorder` (a bounded
buffer and a writer thread, off the request path); ``nb2svc monitor`` reads through the same adapters.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...errors import Nb2svcError

__all__ = ["LoggedPrediction", "Prediction", "PredictionLog", "id_time", "new_id", "open_log"]

_ADAPTERS = {"sqlite": "sqlite", "postgresql": "postgres", "postgres": "postgres"}


@dataclass(frozen=True)
class Prediction:
    """One answered ``POST /invoke``, as the writer stores it (parameters and outputs as JSON text)."""

    id: str
    service: str
    time: float  # seconds since the epoch
    parameters: str  # JSON: every parameter's value, the notebook's defaults included
    outputs: str  # JSON: the answer's body
    latency_s: float
    instance: str
    image: str


@dataclass(frozen=True)
class LoggedPrediction:
    """A prediction read back, with the truth when feedback came."""

    id: str
    time: float
    parameters: dict[str, Any]
    outputs: dict[str, Any]
    latency_s: float
    instance: str
    image: str
    truth: dict[str, Any] | None = field(default=None)


class PredictionLog(Protocol):
    """A store of predictions. Not thread-safe: one connection per thread."""

    def write_batch(self, rows: Sequence[Prediction]) -> None: ...
    def record_feedback(self, prediction_id: str, truth: str, at: float) -> bool:
        """Attach ``truth`` (JSON) to a prediction; False when no prediction has that id."""
        ...

    def read(
        self, service: str, *, first: int | None = None, last: int | None = None, with_truth: bool = False
    ) -> list[LoggedPrediction]:
        """The ``first`` or ``last`` N predictions of ``service`` by time, oldest first (``with_truth``: fed back only).

        By the time each was answered, not by when its replica's writer stored it: replicas write in batches.
        """
        ...

    def services(self) -> list[str]: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def get_meta(self, key: str) -> str | None: ...
    def close(self) -> None: ...


def open_log(url: str) -> PredictionLog:
    """The adapter for ``url``; raises :class:`Nb2svcError` for a scheme nb2svc has no adapter for."""
    scheme = url.partition("://")[0].split("+")[0].lower()
    module = _ADAPTERS.get(scheme)
    if module is None or "://" not in url:
        raise Nb2svcError(
            f"prediction log URL {url!r} is not one nb2svc knows",
            "use sqlite:///PATH, postgresql://USER@HOST/DB, or off",
        )
    adapter: Any = importlib.import_module(f"{__name__}.{module}")
    log: PredictionLog = adapter.connect(url)
    return log


class _Entropy:
    """Random bytes from the OS, 4 KiB at a time: one ``getrandom`` per 409 ids, not one each (12 µs on a VM)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)  # a forked child must not repeat its parent's bytes

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._pool, self._at = b"", 0

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._at + n > len(self._pool):
                self._pool, self._at = os.urandom(4096), 0
            self._at += n
            return self._pool[self._at - n : self._at]


_entropy = _Entropy()


def new_id(now: float | None = None) -> str:
    """A UUIDv7-style id: time-ordered (milliseconds first), then 74 random bits."""
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(_entropy.take(10), "big")
    value = (ms << 80) | (rand & ((1 << 80) - 1))
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def id_time(prediction_id: str) -> float | None:
    """When an id from :func:`new_id` was made (seconds since the epoch); None for anything else."""
    try:
        u = uuid.UUID(prediction_id)
    except ValueError:
        return None
    if u.version != 7 or str(u) != prediction_id.lower():
        return None
    return (u.int >> 80) / 1000
