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

import sys
from typing import Any

# jsonschema, which the gateway imports through nbformat and jupyter_events, imports rfc3987_syntax when it is
# installed (jupyter_events requires it), and that builds an Earley grammar for IRIs at import: 1.5 s of the
# gateway's start, for a format check the gateway never needs. Without it jsonschema leaves "iri" unchecked.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

from kernel_gateway.notebook_http import create_personality, handlers  # noqa: E402

__all__ = ["create_personality", "raw_body"]


def raw_body(request: Any) -> str:
    """The request body as text, whatever its Content-Type (``request``: tornado's HTTPServerRequest)."""
    body: bytes = request.body or b""
    return body.decode("utf-8", errors="surrogateescape")


handlers.parse_body = raw_body  # notebook-http's handler looks it up in its module on each request


def main() -> None:
    """``python3 -m nb2svc.backends.gateway_api FLAGS``: Kernel Gateway, started the quick way.

    One interpreter (``jupyter kernelgateway`` starts two: the ``jupyter`` launcher, then ``jupyter-kernelgateway``),
    and without the IRI grammar above.
    """
    from kernel_gateway.gatewayapp import launch_instance

    launch_instance()


if __name__ == "__main__":
    main()
