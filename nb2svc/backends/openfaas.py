"""The OpenFaaS backend: python3-http's ``handle(event, context)`` over the runtime core.

In an image built with the of-watchdog, the watchdog listens on 8080 and forwards to this
module's server on ``upstream_url`` (127.0.0.1:5000); without the watchdog binary this server
listens on ``$PORT`` (8080) itself and answers ``/_/health`` as the watchdog would, so the image
serves the same contract everywhere.

``handle`` is synchronous, as the template's contract is: the core runs on an event loop of its
own thread, started on first use.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..runtime.config import Config
from ..runtime.core import Core, Reply, Request
from ..spec import inspect_notebook

T = TypeVar("T")
_ALIASES = {"/_/health": "/health"}  # the watchdog's own health route, answered when there is no watchdog
_TEXT_TYPES = ("application/json", "text/", "application/x-ipynb+json")


@dataclass
class Event:
    """What python3-http hands a handler."""

    body: bytes
    headers: Mapping[str, str]
    method: str
    query: Mapping[str, str]
    path: str


@dataclass
class Context:
    hostname: str = field(default_factory=lambda: os.environ.get("HOSTNAME", "localhost"))


def _make_core(env: Mapping[str, str]) -> Core:
    spec = inspect_notebook(env.get("NB2SVC_NOTEBOOK", "notebook.ipynb"), env.get("NB2SVC_KIND") or None)
    return Core(spec, Config.from_env(env, spec))


class _CoreThread:
    """A :class:`Core` on an event loop in a daemon thread, for callers of the synchronous :func:`handle`."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.core = _make_core(env)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="nb2svc-core", daemon=True).start()
        self.run(self.core.start())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


_core: _CoreThread | None = None
_lock = threading.Lock()


def _the_core() -> _CoreThread:
    global _core
    with _lock:
        if _core is None:
            _core = _CoreThread(os.environ)
        return _core


def _request(event: Any) -> Request:
    path = event.path or "/"
    path = _ALIASES.get(path, path)
    return Request(
        method=event.method,
        path=path,
        body=event.body or b"",
        query=dict(event.query or {}),
        headers={k.lower(): v for k, v in (event.headers or {}).items()},
    )


def handle(event: Any, context: Any) -> dict[str, Any]:
    """python3-http's entry point: an event in, ``{"statusCode", "body", "headers"}`` out."""
    core = _the_core()
    return _response(core.run(core.core.handle(_request(event))))


def _response(reply: Reply) -> dict[str, Any]:
    body = reply.file.read_bytes() if reply.file is not None else reply.body
    headers = {"Content-Type": reply.content_type, **reply.headers}
    # The template's index.py sends text bodies as str; keep binary ones as bytes.
    text = reply.content_type.startswith(_TEXT_TYPES)
    return {"statusCode": reply.status, "body": body.decode() if text else body, "headers": headers}


def main() -> None:
    """Serve the notebook's core on ``$PORT`` (8080), or on ``upstream_url``'s port behind the of-watchdog.

    The same HTTP contract as :func:`handle`, which the python3-http template's own ``index.py`` calls.
    """
    from ..runtime import server

    upstream = os.environ.get("upstream_url", "")
    behind_watchdog = os.environ.get("NB2SVC_WATCHDOG") == "1" and upstream
    port = int(upstream.rsplit(":", 1)[1]) if behind_watchdog else int(os.environ.get("PORT", "8080"))
    host = "127.0.0.1" if behind_watchdog else os.environ.get("NB2SVC_HOST", "0.0.0.0")  # noqa: S104  # a container's port
    # The server hands requests to the core on its own loop: the same server as `nb2svc serve`, no thread hop.
    server.run(_make_core(os.environ), server.bind(host, port), env=os.environ, aliases=_ALIASES)


if __name__ == "__main__":
    main()
