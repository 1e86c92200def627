"""The ASGI adapter behind `nb2svc serve` (and the images' default server): HTTP in, :class:`Core` out."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl

from starlette.responses import FileResponse
from starlette.types import Message, Receive, Scope, Send

from ..spec import ServiceSpec
from .config import Config
from .core import Core, Reply, Request, too_large


class ASGIAdapter:
    """Reads the body (stopping at the size limit), asks the core, sends the reply."""

    def __init__(self, core: Core) -> None:
        self.core = core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(
            method=scope["method"],
            path=scope["path"],
            query=_query(scope["query_string"]),
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
        )
        body = await self._read_body(request, receive)
        if isinstance(body, Reply):
            reply = body
        else:
            reply = await self.core.handle(Request(request.method, request.path, body, request.query, request.headers))
        if reply.file is not None:
            await FileResponse(reply.file, media_type=reply.content_type, headers=reply.headers)(scope, receive, send)
            return
        # A body in memory is sent as two ASGI messages: no response object to build per request.
        headers = [
            (b"content-type", reply.content_type.encode("latin-1")),
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()),
        ]
        if reply.status not in (204, 304):  # those have no body, and say no length (RFC 9110 §8.6)
            headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _read_body(self, request: Request, receive: Receive) -> bytes | Reply:
        limit = self.core.config.max_body
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return self.core.refuse(request, too_large(limit))
        chunks: list[bytes] = []
        size = 0
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return self.core.refuse(request, too_large(limit))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.core.start()
                except Exception as e:
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.core.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _query(raw: bytes) -> dict[str, str]:
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))


def create_app(spec: ServiceSpec, env: Mapping[str, str]) -> ASGIAdapter:
    """The ASGI app for a spec, configured from ``env`` (``NB2SVC_*``)."""
    return ASGIAdapter(Core(spec, Config.from_env(env, spec)))
