"""The gateway's API personality: Kernel Gateway's notebook-http, with request bodies passed on as sent.

notebook-http turns a form-encoded body into a dict of lists before the kernel sees it, and a
form-encoded Content-Type is what ``curl -d '{"x": 1}'`` sends by default: the JSON the caller
wrote becomes ``{'{"x": 1}': [""]}`` and cannot be recovered (``&``, ``=`` and ``+`` are lost).
nb2svc's contract reads the body as JSON whatever its Content-Type, as the OpenFaaS backend and
``nb2svc serve`` do; so the gateway is started with ``--KernelGatewayApp.api`` naming this module,
which is notebook-http with its body parser replaced by one that keeps the body's text.

Bytes that are not UTF-8 are kept too (as surrogate escapes, which survive the gateway's JSON
``REQUEST``): the core then answers them with the same 400 as the other backends.
"""

from __future__ import annotations

from typing import Any

from kernel_gateway.notebook_http import create_personality, handlers

__all__ = ["create_personality", "raw_body"]


def raw_body(request: Any) -> str:
    """The request body as text, whatever its Content-Type (``request``: tornado's HTTPServerRequest)."""
    body: bytes = request.body or b""
    return body.decode("utf-8", errors="surrogateescape")


handlers.parse_body = raw_body  # notebook-http's handler looks it up in its module on each request
