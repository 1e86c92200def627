"""The runtime core: what runs inside every image and behind `nb2svc serve`.

It imports neither click, jinja2 nor docker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..spec import ServiceSpec
    from .app import create_app

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    # Lazy, so that the serving worker (a submodule) starts without importing the HTTP stack.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def serve(
    notebook: str | Path | ServiceSpec,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    kind: str | None = None,
    env: Mapping[str, str] | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve a notebook (or its compiled spec) until interrupted; settings from ``env`` (``NB2SVC_*``).

    The port is bound before ``announce`` is called with the URL, so a port in use fails first.
    """
    from ..spec import ServiceSpec, inspect_notebook
    from . import server
    from .config import Config
    from .core import Core

    env = os.environ if env is None else env
    spec = notebook if isinstance(notebook, ServiceSpec) else inspect_notebook(notebook, kind)
    core = Core(spec, Config.from_env(env, spec))
    sock = server.bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING)  # it logs every run's paths at INFO
    server.run(core, sock, env=env, announce=(lambda: announce(url)) if announce else None)
