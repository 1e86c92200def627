"""The serving side of the prediction log: a bounded buffer in front of a writer thread.

The request path only calls :meth:`Recorder.record`: a non-blocking put into a bounded queue (when it is
full the prediction is dropped and counted). A writer thread takes what is queued in batches and writes
them; while the store is unreachable it keeps its batch, reconnects with a growing delay (0.5 s doubling up
to 30 s) and the queue absorbs what comes meanwhile, so serving never waits on the database.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from . import Prediction, PredictionLog, id_time, open_log

log = logging.getLogger("nb2svc.predictions")
_BATCH = 500  # rows per insert
_LINGER = 0.2  # seconds the writer waits for more rows before it writes what it has
_RETRY_FIRST, _RETRY_MAX = 0.5, 30.0
_FAILED_WRITES = 3  # a batch that fails this often on fresh connections is dropped (the data, not the store)
_PENDING_WAIT = 5.0  # seconds feedback waits for its prediction to leave the buffer
_RECENT = 10.0  # an id younger than this may still sit in another replica's buffer: look again before a 404
_DROP_REASONS = ("full", "too_large", "error", "closed")


class LogUnavailable(Exception):
    """The store cannot be reached for feedback (a 503)."""


@dataclass(frozen=True)
class LogSettings:
    url: str  # "off" turns the log off
    sample: float = 1.0  # share of predictions logged
    buffer: int = 10_000  # predictions held while the writer is behind or the store is down
    max_row: int = 1024 * 1024  # bytes of a prediction's request and answer bodies; larger ones are not logged


class Recorder:
    """Logs predictions of one service; ``meta`` (the service's typed parameters) is stored at connect."""

    def __init__(self, settings: LogSettings, service: str, meta: dict[str, Any]) -> None:
        self.settings = settings
        self.service = service
        self._meta = json.dumps(meta)
        self._queue: queue.Queue[_Queued] = queue.Queue(maxsize=max(1, settings.buffer))
        self._batch = min(_BATCH, max(1, settings.buffer))  # in the writer's hands: the buffer bounds it too
        self._pending: set[str] = set()  # ids queued or being written
        self._flushed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._feedback_db: PredictionLog | None = None
        self._feedback_lock = threading.Lock()
        self.written = 0
        self.dropped: Counter[str] = Counter(dict.fromkeys(_DROP_REASONS, 0))
        self.connected = False

    @property
    def enabled(self) -> bool:
        return self.settings.url != "off"

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nb2svc-prediction-log", daemon=True)
            self._thread.start()

    def sampled(self) -> bool:
        return self.enabled and (self.settings.sample >= 1 or random.random() < self.settings.sample)  # noqa: S311  # sampling, not secrets

    def record(
        self,
        prediction_id: str,
        parameters: dict[str, Any],
        outputs: bytes,
        latency_s: float,
        instance: str,
        image: str,
        size: int,
    ) -> None:
        """Queue one prediction (never blocks; the JSON is written in the writer thread).

        ``outputs``: the answer's JSON body; ``size``: the request's and the answer's bodies in bytes.
        """
        if size > self.settings.max_row:
            self.dropped["too_large"] += 1
            return
        item = _Queued(prediction_id, self.service, time.time(), parameters, outputs, latency_s, instance, image)
        with self._flushed:
            self._pending.add(prediction_id)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._flushed:
                self._pending.discard(prediction_id)
            self.dropped["full"] += 1

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for up to ``timeout`` s), then stop; what is left is counted as dropped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.dropped["closed"] += self._queue.qsize()
        with self._feedback_lock:
            if self._feedback_db is not None:
                self._feedback_db.close()
                self._feedback_db = None

    # --- the writer thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        db: PredictionLog | None = None
        batch: list[Prediction] = []
        delay, failures = _RETRY_FIRST, 0
        while True:
            if not batch:
                batch = self._take()
                if not batch:
                    if self._stop.is_set():
                        break
                    continue
            if db is None:
                db = self._connect()
                if db is None:
                    if self._stop.wait(delay):
                        self.dropped["closed"] += len(batch)
                        self._done(batch)
                        break
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                delay = _RETRY_FIRST
            try:
                db.write_batch(batch)
            except Exception as e:
                failures += 1
                log.warning("could not write %d predictions to the log (%s); reconnecting", len(batch), e)
                _close_quietly(db)
                db, self.connected = None, False
                if failures >= _FAILED_WRITES:
                    self.dropped["error"] += len(batch)
                    self._done(batch)
                    batch, failures = [], 0
                continue
            self.written += len(batch)
            self._done(batch)
            batch, failures = [], 0
        if db is not None:
            _close_quietly(db)

    def _take(self) -> list[Prediction]:
        try:
            first = self._queue.get(timeout=_LINGER)
        except queue.Empty:
            return []
        # Then let rows gather rather than wake for each one: one wake-up (and one GIL hand-off) per batch.
        self._stop.wait(_LINGER)
        batch = [first]
        while len(batch) < self._batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [_row(item) for item in batch]

    def _connect(self) -> PredictionLog | None:
        try:
            db = open_log(self.settings.url)
            db.set_meta(f"service:{self.service}", self._meta)
        except Exception as e:
            if self.connected or not getattr(self, "_warned", False):
                log.warning("the prediction log %s is unavailable (%s); retrying", _safe(self.settings.url), e)
                self._warned = True
            self.connected = False
            return None
        self.connected = True
        return db

    def _done(self, batch: list[Prediction]) -> None:
        with self._flushed:
            self._pending.difference_update(p.id for p in batch)
            self._flushed.notify_all()

    # --- feedback (called in a worker thread of the event loop) ------------------------------------------

    def feedback(self, prediction_id: str, truth: dict[str, Any]) -> bool:
        """Attach ``truth`` to a logged prediction; False when none has that id. Raises :class:`LogUnavailable`."""
        if not self.enabled:
            return False
        with self._flushed:  # still in the buffer: wait for the writer to store it
            self._flushed.wait_for(lambda: prediction_id not in self._pending, _PENDING_WAIT)
        made = id_time(prediction_id)
        recent = made is not None and time.time() - made < _RECENT
        text = json.dumps(truth, allow_nan=False)
        for attempt in range(3 if recent else 1):
            if attempt:
                time.sleep(_LINGER * 2 * attempt)  # another replica's writer may not have written it yet
            if self._update(prediction_id, text):
                return True
        return False

    def _update(self, prediction_id: str, truth: str) -> bool:
        with self._feedback_lock:
            try:
                if self._feedback_db is None:
                    self._feedback_db = open_log(self.settings.url)
                return self._feedback_db.record_feedback(prediction_id, truth, time.time())
            except Exception as e:
                if self._feedback_db is not None:
                    _close_quietly(self._feedback_db)
                    self._feedback_db = None
                raise LogUnavailable(f"the prediction log is unavailable: {e}") from None


class _Queued(NamedTuple):
    id: str
    service: str
    time: float
    parameters: dict[str, Any]
    outputs: bytes
    latency_s: float
    instance: str
    image: str


def _row(q: _Queued) -> Prediction:
    return Prediction(
        q.id,
        q.service,
        q.time,
        msgspec.json.encode(q.parameters).decode(),
        q.outputs.decode(),
        q.latency_s,
        q.instance,
        q.image,
    )


def _close_quietly(db: PredictionLog) -> None:
    try:
        db.close()
    except Exception as e:
        log.debug("closing the prediction log: %s", e)


def _safe(url: str) -> str:
    """A URL without its password, for the log."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        user, colon, _ = creds.partition(":")
        return f"{scheme}{sep}{user}{':***' if colon else ''}@{host}"
    return url
