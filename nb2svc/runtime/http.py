"""The request and reply every adapter hands the core, free of any web framework."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import HTTPError


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    values: dict[str, Any] | None = None  # the parameters, when the core already read them off the event loop
    sent: dict[str, Any] | None = None  # the parameters as sent, where references were fetched into ``values``


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None  # sent instead of body: executed notebooks and artifacts

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        # Strict JSON: a NaN or Infinity never reaches a client (JSON.parse would refuse the whole body).
        return cls(status, json.dumps(value, separators=(",", ":"), allow_nan=False).encode(), headers=headers or {})


Handler = Callable[[Request, dict[str, str]], Awaitable[Reply]]


def too_large(limit: int) -> HTTPError:
    return HTTPError(413, "body_too_large", f"the body is larger than {limit} bytes")
