"""The HTTP/1.1 server every Python backend runs: httptools' parser in front of :class:`Core`, nothing between.

The core already takes a whole request and returns a whole reply, so the server needs no ASGI cycle, no
per-request message dicts and no framework: it parses with httptools (llhttp, the parser uvicorn uses),
buffers the body up to the size limit, awaits ``core.handle`` and writes one reply. On this project's
2-core VM uvicorn's per-request cycle was 45% of an in-process request's samples; this is what the hop to
the worker process is paid for with (docs/benchmarks.md, session 7).

What it does, as a mature HTTP/1.1 server must:
- keep-alive (HTTP/1.1 by default, HTTP/1.0 on request), ``Connection: close``, pipelined requests answered
  in order (reading pauses when 8 wait);
- ``Content-Length`` and chunked bodies; a body over ``max_body`` is a 413 at once (by its declared length
  or as it arrives) and the connection closes, unread; ``Expect: 100-continue`` answered when the body is
  wanted; a request the parser refuses is a JSON 400 and a close;
- files (executed notebooks, artifacts) streamed with the transport's flow control; ``HEAD`` sends no body;
- ``Date`` on every reply; header values with CR or LF never reach the wire (a 500 instead);
- bounds on what clients can hold: a request's headers must arrive within ``NB2SVC_HEADER_TIMEOUT`` of the
  connection opening or its last reply (slowloris), an idle keep-alive connection closes after 5 s, and past
  ``NB2SVC_MAX_CONNECTIONS`` a new connection gets a JSON 503 and is closed;
- SIGTERM or SIGINT: stop accepting, close idle connections, finish the requests in flight, close the core
  (its workers, the prediction log); a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import resource
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qsl, unquote

import httptools

from ..errors import ExternalError, Nb2svcError
from .core import INSTANCE_HEADER, Core, internal_error
from .errors import HTTPError
from .http import Reply, Request, too_large

log = logging.getLogger("nb2svc.server")

KEEP_ALIVE_S = 5.0  # an idle keep-alive connection is closed after this (uvicorn's default)
PIPELINE_MAX = 8  # requests parsed ahead on one connection before reading pauses
FILE_CHUNK = 256 * 1024
_BUSY = json.dumps({"error": "too_many_connections", "message": "the server holds its most connections; retry"})
_STATUS = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("latin-1")) for s in HTTPStatus if s.value >= 200}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUS = (204, 304)


class _Date:
    """The ``Date`` header, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: %s\r\n" % formatdate(now, usegmt=True).encode()
        return self._line


class _State:
    """What all connections share: the core, the limits, the open connections and the requests in flight."""

    def __init__(self, core: Core, header_timeout: float, max_connections: int, aliases: Mapping[str, str]) -> None:
        self.core = core
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.aliases = aliases
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.date = _Date()
        self.stopping = False
        body = _BUSY.encode()
        self.busy_reply = (  # past the connection bound: written before any parsing, so made once
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"retry-after: 1\r\n%s: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (INSTANCE_HEADER.encode(), core.config.instance.encode("latin-1", "replace"), len(body), body)
        )


def _header_block(status: int, headers: list[tuple[str, str]], date: bytes, keep_alive: bool) -> bytes:
    parts = [_STATUS.get(status) or b"HTTP/1.1 %d \r\n" % status, date]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        parts.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One client connection: parse requests, hand each whole request to the core, write replies in order."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.queue: deque[tuple[Request, bool, Reply | None]] = deque()  # parsed, not yet answered
        self.busy = False  # a request of this connection is with the core
        self.reading = True
        self.closed = False
        self.writable = asyncio.Event()
        self.writable.set()
        self.timer: asyncio.TimerHandle | None = None
        self._idle_since = self.loop.time()  # when the connection opened or its last reply went out
        self.limit = state.core.config.max_body
        # the request being parsed
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._refused = False  # over the size limit: answered, the rest of the connection is not read
        self._continue = False  # Expect: 100-continue, not yet answered

    # -- the transport's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.connections.add(self)
        if len(self.state.connections) > self.state.max_connections or self.state.stopping:
            transport.write(self.state.busy_reply)  # type: ignore[attr-defined]
            transport.close()
            return
        self._arm(min(KEEP_ALIVE_S, self.state.header_timeout), self._idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        self._disarm()
        self.queue.clear()
        self.writable.set()  # a file being sent stops at its next chunk

    def data_received(self, data: bytes) -> None:
        if self._refused or self.closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade (WebSocket, h2c) is not offered: the request is answered as HTTP/1.1, then the connection
            # closes, since what follows on it is no longer HTTP/1.1.
            self._refuse_rest()
        except httptools.HttpParserError as e:
            self._bad_request(str(e) or "malformed request")

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # -- the parser's callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0
        self._continue = False
        if not self.busy and not self.queue:  # idle until now: the headers must come within the header timeout
            left = self._idle_since + self.state.header_timeout - self.loop.time()  # of the open or the last reply
            self._arm(max(left, 0.0), self._slow_headers)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.rstrip(b" \t").decode("latin-1")  # llhttp keeps trailing whitespace (RFC 9110 §5.5)
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        if self.timer is not None and not self.busy and not self.queue:
            self._disarm()
        declared = self._headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            self._over_limit()
            return
        if self._headers.get("expect", "").lower() == "100-continue":
            self._continue = True
            if not self.busy and not self.queue:
                self._send_continue()

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._size += len(body)
        if self._size > self.limit:
            self._over_limit()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._enqueue(self._request(b"".join(self._body)), None)

    # -- requests and replies

    def _request(self, body: bytes) -> Request:
        url = httptools.parse_url(self._url)
        path = url.path.decode("latin-1")
        if "%" in path:
            path = unquote(path, "latin-1")
        path = self.state.aliases.get(path, path)
        query = dict(parse_qsl(url.query.decode("latin-1"), keep_blank_values=True)) if url.query else {}
        method = self.parser.get_method().decode("latin-1")
        return Request(method=method, path=path, body=body, query=query, headers=self._headers)

    def _enqueue(self, request: Request, refusal: Reply | None) -> None:
        keep_alive = refusal is None and self.parser.should_keep_alive() and not self.state.stopping
        self.queue.append((request, keep_alive, refusal))
        if len(self.queue) >= PIPELINE_MAX:
            self._pause()
        if not self.busy:
            self._next()

    def _next(self) -> None:
        request, keep_alive, refusal = self.queue.popleft()
        self.busy = True
        task = self.loop.create_task(self._answer(request, keep_alive, refusal))
        self.state.tasks.add(task)
        task.add_done_callback(self.state.tasks.discard)

    async def _answer(self, request: Request, keep_alive: bool, refusal: Reply | None) -> None:
        reply = refusal if refusal is not None else await self.state.core.handle(request)
        if self.closed:
            return
        keep_alive = keep_alive and not self.state.stopping
        try:
            await self._write(request, reply, keep_alive)
        except Exception:
            log.exception("could not send the reply to %s %s", request.method, request.path)
            self.transport.close()
            return
        self._done(keep_alive)

    async def _write(self, request: Request, reply: Reply, keep_alive: bool) -> None:
        headers = [("content-type", reply.content_type), *reply.headers.items()]
        size = reply.file.stat().st_size if reply.file is not None else len(reply.body)
        if reply.status not in _NO_BODY_STATUS:  # those have no body and say no length (RFC 9110 §8.6)
            headers.append(("content-length", str(size)))
        try:
            head = _header_block(reply.status, headers, self.state.date.line(), keep_alive)
        except ValueError as e:
            log.error("%s %s: %s; answering 500", request.method, request.path, e)
            await self._write(request, self.state.core.error_reply(internal_error()), keep_alive)
            return
        if request.method == "HEAD" or reply.status in _NO_BODY_STATUS:
            self.transport.write(head)
        elif reply.file is None:
            self.transport.write(head + reply.body)
        else:
            self.transport.write(head)
            await self._send_file(reply.file)

    async def _send_file(self, path: Path) -> None:
        with path.open("rb") as f:
            while not self.closed:
                chunk = await asyncio.to_thread(f.read, FILE_CHUNK)
                if not chunk:
                    return
                self.transport.write(chunk)
                await self.writable.wait()

    def _done(self, keep_alive: bool) -> None:
        self.busy = False
        if not keep_alive or (self._refused and not self.queue):  # nothing more will be read on it
            self.transport.close()
            return
        if self.queue:
            self._next()
            return
        if not self.reading:
            self.reading = True
            self.transport.resume_reading()
        if self._continue:  # a request behind the one just answered waits for its 100 before sending its body
            self._send_continue()
        if self.state.stopping:
            self.transport.close()
            return
        self._idle_since = self.loop.time()
        self._arm(min(KEEP_ALIVE_S, self.state.header_timeout), self._idle)

    def _send_continue(self) -> None:
        self._continue = False
        self.transport.write(_CONTINUE)

    def _over_limit(self) -> None:
        """A body over the limit: answered with a 413 in its turn, and nothing more is read on this connection."""
        request = self._request(b"")
        self._refused = True
        self._pause()
        self._enqueue(request, self.state.core.refuse(request, too_large(self.limit)))

    def _refuse_rest(self) -> None:
        self._refused = True
        self._pause()
        if not self.busy and not self.queue:
            self.transport.close()
        else:  # answer what was read, then close
            self.queue = deque((r, False, refusal) for r, _, refusal in self.queue)

    def _bad_request(self, why: str) -> None:
        self._refused = True
        self._pause()
        error = HTTPError(400, "bad_request", f"malformed HTTP request: {why}")
        request = Request("GET", "/")  # nothing of it can be trusted
        self._enqueue(request, self.state.core.refuse(request, error))

    def _pause(self) -> None:
        if self.reading:
            self.reading = False
            self.transport.pause_reading()

    # -- timers

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self.timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _idle(self) -> None:
        self.timer = None
        if not self.busy and not self.queue and not self.closed:
            self.transport.close()

    def _slow_headers(self) -> None:
        self.timer = None
        if not self.closed:
            self.transport.close()

    def shutdown(self) -> None:
        """The server is stopping: close now if idle, else after the reply in flight."""
        if not self.busy and not self.queue:
            self.transport.close()


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


async def _serve(state: _State, sock: socket.socket, announce: Callable[[], None] | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:  # a second Ctrl-C: stop now, as uvicorn does (the workers end with this process)
            log.warning("stopping at once: the requests in flight are not answered")
            logging.shutdown()
            os._exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await state.core.start()
    server = await loop.create_server(lambda: _Connection(state), sock=sock, backlog=2048)
    if announce is not None:
        announce()
    try:
        await stop.wait()
    finally:
        state.stopping = True
        server.close()
        for connection in list(state.connections):
            connection.shutdown()
        if state.tasks:
            await asyncio.wait(list(state.tasks))
        await state.core.close()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop is optional: asyncio's own loop serves the same
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(
    core: Core,
    sock: socket.socket,
    *,
    env: Mapping[str, str],
    announce: Callable[[], None] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> None:
    """Serve ``core`` on an already bound socket until SIGINT or SIGTERM.

    ``NB2SVC_HEADER_TIMEOUT`` (seconds, default 10) and ``NB2SVC_MAX_CONNECTIONS`` (default 1000) bound
    what idle or slow clients can hold. ``aliases`` maps a request path to the one the core answers.
    """
    header_timeout = _setting(env, "NB2SVC_HEADER_TIMEOUT", 10.0)
    max_connections = int(_setting(env, "NB2SVC_MAX_CONNECTIONS", 1000))
    _raise_fd_limit()
    state = _State(core, header_timeout, max_connections, aliases or {})
    loop = _new_loop()
    try:
        loop.run_until_complete(_serve(state, sock, announce))
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
