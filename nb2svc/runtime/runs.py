"""A training run's record, and its JSON form (what every run store keeps)."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def _not_json(name: str) -> Any:
    raise ValueError(f"it holds {name}, which is not JSON")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Run:
    id: str
    status: str
    parameters: dict[str, Any]
    created_at: str
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    artifacts: list[str] = field(default_factory=list)
    instance: str | None = None  # the instance that executed it (NB2SVC_INSTANCE, else the host name)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def order(self) -> tuple[str, str]:
        """Where the run sorts in ``GET /runs`` (newest first) and in a page's cursor."""
        return self.created_at, self.id

    def to_json(self) -> str:
        """Strict JSON: a NaN or Infinity is a ValueError, never written."""
        return json.dumps(asdict(self), indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Run:
        """Read a record back; a ValueError or TypeError when it is not one (NaN included: not JSON)."""
        return cls(**json.loads(text, parse_constant=_not_json))
