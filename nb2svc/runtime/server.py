"""The HTTP server every Python backend runs: uvicorn, bound before it is announced, with connection bounds.

uvicorn closes a keep-alive connection that stays idle after a response, but not one that never sends
a request, nor one that sends its headers a byte at a time: either holds a file descriptor for ever.
Here every connection must deliver a request's headers within ``header_timeout`` of opening (or of its
last response), and past ``max_connections`` a new connection gets a JSON 503 and is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import resource
import socket
from collections.abc import Callable, Mapping
from typing import Any

import uvicorn

from ..errors import ExternalError, Nb2svcError

_BUSY = json.dumps({"error": "too_many_connections", "message": "the server holds its most connections; retry"})


def _protocol(base: type[Any], header_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    class Bounded(base):  # type: ignore[misc]  # uvicorn's protocol class, chosen at run time
        _nb2svc_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                body = _BUSY.encode()
                transport.write(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    b"retry-after: 1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                )
                transport.close()
                return
            self._nb2svc_arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._nb2svc_arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._nb2svc_timer is not None:
                self._nb2svc_timer.cancel()
            super().connection_lost(exc)

        def _nb2svc_arm(self) -> None:
            if self._nb2svc_timer is not None:
                self._nb2svc_timer.cancel()
            self._nb2svc_timer = self.loop.call_later(header_timeout, self._nb2svc_check, self.cycle)

        def _nb2svc_check(self, cycle: Any) -> None:
            # A new request's headers made a new cycle; the same one, finished (or none), means none came.
            if self.transport.is_closing() or self.cycle is not cycle:
                return
            if cycle is None or cycle.response_complete:
                self.transport.close()

    return Bounded


def _http_protocol() -> type[Any]:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # httptools is optional
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or an error that says the port is taken (before anything is announced)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the proto says TCP (else
    # Nagle and delayed ACKs add 40 ms to every keep-alive request after the first)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        reason = "the address is already in use" if e.errno == errno.EADDRINUSE else e.strerror or str(e)
        raise ExternalError(
            f"cannot listen on {host}:{port}: {reason}", "pick another --port, or stop what listens there"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _raise_fd_limit() -> None:
    """Take the whole hard limit of file descriptors: each connection holds one."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _setting(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key) or ""
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise Nb2svcError(f"{key}={raw!r} is not a number") from None
    if value <= 0:
        raise Nb2svcError(f"{key}={raw!r} must be a positive number")
    return value


def run(
    app: Any,
    sock: socket.socket,
    *,
    env: Mapping[str, str],
    announce: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` on an already bound socket until interrupted.

    ``NB2SVC_HEADER_TIMEOUT`` (seconds, default 10) and ``NB2SVC_MAX_CONNECTIONS`` (default 1000) bound
    what idle or slow clients can hold.
    """
    header_timeout = _setting(env, "NB2SVC_HEADER_TIMEOUT", 10.0)
    max_connections = int(_setting(env, "NB2SVC_MAX_CONNECTIONS", 1000))
    _raise_fd_limit()
    config = uvicorn.Config(
        app,
        http=_protocol(_http_protocol(), header_timeout, max_connections),
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # the client's address is never used: no middleware to rewrite it per request
        lifespan="on",
        timeout_keep_alive=5,
    )
    if announce is not None:
        announce()
    uvicorn.Server(config).run(sockets=[sock])
