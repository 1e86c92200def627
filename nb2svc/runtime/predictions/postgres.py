"""The shared prediction log: PostgreSQL (psycopg 3, imported only when a postgresql:// URL is used).

Replicas of one service write to the same tables; the schema is made once, under an advisory lock, by
whichever replica comes first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ...errors import Nb2svcError
from . import LoggedPrediction, Prediction

_LOCK = 0x6E623273  # "nb2s": serialises CREATE TABLE IF NOT EXISTS across replicas starting together
_SCHEMA = """
CREATE TABLE IF NOT EXISTS nb2svc_predictions (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    service TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    parameters JSONB NOT NULL,
    outputs JSONB NOT NULL,
    latency_s DOUBLE PRECISION NOT NULL,
    instance TEXT NOT NULL,
    image TEXT NOT NULL,
    truth JSONB,
    feedback_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS nb2svc_predictions_time ON nb2svc_predictions (service, time);
CREATE TABLE IF NOT EXISTS nb2svc_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = "id, time, parameters, outputs, latency_s, instance, image, truth"


class PostgresLog:
    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise Nb2svcError(
                "a postgresql:// prediction log needs psycopg, which is not installed here",
                "pip install 'psycopg[binary]' (in an image: the notebook's requirements, or nb2svc[postgres])",
            ) from None
        self._db = psycopg.connect(url.replace("postgres://", "postgresql://", 1), autocommit=True, connect_timeout=5)
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)

    def write_batch(self, rows: Sequence[Prediction]) -> None:
        with self._db.transaction(), self._db.cursor() as cur:
            cur.executemany(
                "INSERT INTO nb2svc_predictions (id, service, time, parameters, outputs, latency_s, instance, image) "
                "VALUES (%s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                [(r.id, r.service, r.time, r.parameters, r.outputs, r.latency_s, r.instance, r.image) for r in rows],
            )

    def record_feedback(self, prediction_id: str, truth: str, at: float) -> bool:
        cur = self._db.execute(
            "UPDATE nb2svc_predictions SET truth = %s::jsonb, feedback_at = %s WHERE id = %s",
            (truth, at, prediction_id),
        )
        return cur.rowcount > 0

    def read(
        self, service: str, *, first: int | None = None, last: int | None = None, with_truth: bool = False
    ) -> list[LoggedPrediction]:
        where = "service = %s" + (" AND truth IS NOT NULL" if with_truth else "")
        order, limit = ("DESC", last) if last is not None else ("", first)
        sql = f"SELECT {_COLUMNS} FROM nb2svc_predictions WHERE {where} ORDER BY time {order}, seq {order} LIMIT %s"  # noqa: S608  # fixed text
        rows = self._db.execute(sql, (service, limit)).fetchall()  # LIMIT NULL: all
        if last is not None:
            rows.reverse()
        return [_row(r) for r in rows]

    def services(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT service FROM nb2svc_predictions ORDER BY service")]

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO nb2svc_meta (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM nb2svc_meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        self._db.close()


def _row(r: Sequence[Any]) -> LoggedPrediction:
    def value(v: Any) -> Any:  # psycopg reads jsonb as Python values already
        return json.loads(v) if isinstance(v, str | bytes) else v

    return LoggedPrediction(
        id=r[0],
        time=r[1],
        parameters=value(r[2]),
        outputs=value(r[3]),
        latency_s=r[4],
        instance=r[5],
        image=r[6],
        truth=None if r[7] is None else value(r[7]),
    )


def connect(url: str) -> PostgresLog:
    return PostgresLog(url)
