"""Serving in this very process: for a Kernel Gateway kernel, which is itself the notebook's worker.

No crash isolation and no timeout (a kernel cannot interrupt its own cell from inside); the
gateway's own kernel pool and restarts stand in for them. Also what ``NB2SVC_WORKERS=0`` picks for
the other backends: one process hop less per request, for notebooks trusted not to crash or hang.
Requests then run one at a time, on the server's own event loop.
"""

from __future__ import annotations

import os
from typing import Any

from ..spec import ServiceSpec
from .config import Config
from .errors import HTTPError
from .serving import answer, plan, setup_failure
from .validation import OutputChecker
from .worker import Session


class InProcessExecutor:
    def __init__(self, spec: ServiceSpec, config: Config) -> None:
        self.spec = spec
        self.config = config
        self.state = "starting"
        self.setup_error: dict[str, Any] | None = None
        self._session = Session(plan(spec))
        self._outputs = OutputChecker(spec)

    async def start(self) -> None:
        os.chdir(self.spec.notebook.parent)  # as in a worker: relative paths work as in Jupyter
        reply = self._session.setup()
        if reply["ok"]:
            self.state = "ok"
        else:
            self.state, self.setup_error = "failed", setup_failure(reply, self.config)

    async def close(self) -> None:
        pass

    async def invoke(self, values: dict[str, Any]) -> dict[str, Any]:
        if self.state != "ok":
            raise HTTPError(503, "not_ready", "the notebook's setup failed", cause=self.setup_error)
        return answer(self._session.invoke(values), self._outputs, self.config)
