"""The embedded prediction log: one SQLite file (WAL mode, so readers and several writers share it)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from . import LoggedPrediction, Prediction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nb2svc_predictions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    service TEXT NOT NULL,
    time REAL NOT NULL,
    parameters TEXT NOT NULL,
    outputs TEXT NOT NULL,
    latency_s REAL NOT NULL,
    instance TEXT NOT NULL,
    image TEXT NOT NULL,
    truth TEXT,
    feedback_at REAL
);
CREATE INDEX IF NOT EXISTS nb2svc_predictions_time ON nb2svc_predictions (service, time);
CREATE TABLE IF NOT EXISTS nb2svc_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = "id, time, parameters, outputs, latency_s, instance, image, truth"


def path_of(url: str) -> Path:
    """``sqlite:///rel/path`` → rel/path; ``sqlite:////abs/path`` → /abs/path (SQLAlchemy's convention)."""
    parts = urlsplit(url)
    return Path(unquote(parts.path[1:] if parts.path.startswith("/") else parts.path))


class SQLiteLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread off: the feedback path's connection is used by one thread at a time, under a lock
        self._db = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def write_batch(self, rows: Sequence[Prediction]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO nb2svc_predictions "
                "(id, service, time, parameters, outputs, latency_s, instance, image) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.id, r.service, r.time, r.parameters, r.outputs, r.latency_s, r.instance, r.image) for r in rows],
            )

    def record_feedback(self, prediction_id: str, truth: str, at: float) -> bool:
        cur = self._db.execute(
            "UPDATE nb2svc_predictions SET truth = ?, feedback_at = ? WHERE id = ?", (truth, at, prediction_id)
        )
        return cur.rowcount > 0

    def read(
        self, service: str, *, first: int | None = None, last: int | None = None, with_truth: bool = False
    ) -> list[LoggedPrediction]:
        where = "service = ?" + (" AND truth IS NOT NULL" if with_truth else "")
        if last is not None:
            sql = f"SELECT {_COLUMNS} FROM nb2svc_predictions WHERE {where} ORDER BY time DESC, seq DESC LIMIT ?"  # noqa: S608  # fixed text
            rows = self._db.execute(sql, (service, last)).fetchall()[::-1]
        else:
            sql = f"SELECT {_COLUMNS} FROM nb2svc_predictions WHERE {where} ORDER BY time, seq LIMIT ?"  # noqa: S608  # fixed text
            rows = self._db.execute(sql, (service, -1 if first is None else first)).fetchall()
        return [_row(r) for r in rows]

    def services(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT service FROM nb2svc_predictions ORDER BY service")]

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO nb2svc_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM nb2svc_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        self._db.close()


def _row(r: tuple[Any, ...]) -> LoggedPrediction:
    return LoggedPrediction(
        id=r[0],
        time=r[1],
        parameters=json.loads(r[2]),
        outputs=json.loads(r[3]),
        latency_s=r[4],
        instance=r[5],
        image=r[6],
        truth=None if r[7] is None else json.loads(r[7]),
    )


def connect(url: str) -> SQLiteLog:
    return SQLiteLog(path_of(url))
