"""The HTTP contract (SPEC section 2), free of any web framework.

:class:`Core` takes a :class:`Request` (method, path, query, headers, body bytes) and returns a
:class:`Reply`. Every backend is a thin adapter over it: the ASGI app behind `nb2svc serve`
(app.py), and later the OpenFaaS handler and the Kernel Gateway endpoint cells. Validation,
execution, outputs, errors and metrics live here once.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..openapi import openapi_document
from ..spec import ServiceSpec
from .config import Config
from .errors import HTTPError
from .inprocess import InProcessExecutor
from .metrics import CONTENT_TYPE, Metrics
from .runs import Run
from .serving import ServingExecutor
from .training import TrainingExecutor
from .validation import Validator, parse_json_body

log = logging.getLogger("nb2svc.core")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None  # sent instead of body: executed notebooks and artifacts

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, json.dumps(value, separators=(",", ":")).encode(), headers=headers or {})


Handler = Callable[[Request, dict[str, str]], Awaitable[Reply]]


class Serving(Protocol):
    """What runs a serving notebook: worker processes (ServingExecutor) or this process (InProcessExecutor)."""

    state: str
    setup_error: dict[str, Any] | None

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def invoke(self, values: dict[str, Any]) -> dict[str, Any]: ...


def too_large(limit: int) -> HTTPError:
    return HTTPError(413, "body_too_large", f"the body is larger than {limit} bytes")


class Core:
    """One notebook's service: start it, hand it requests, close it."""

    def __init__(self, spec: ServiceSpec, config: Config, serving: Serving | None = None) -> None:
        self.spec = spec
        self.config = config
        self.validate = Validator(spec)
        self.metrics = Metrics()
        self._openapi = json.dumps(openapi_document(spec), separators=(",", ":")).encode()
        api: _ServingAPI | _TrainingAPI
        if spec.kind == "serving":
            if serving is None:  # NB2SVC_WORKERS=0 trades crash isolation and timeouts for one process hop less
                serving = InProcessExecutor(spec, config) if config.workers == 0 else ServingExecutor(spec, config)
            api = _ServingAPI(self, serving)
        else:
            api = _TrainingAPI(self, TrainingExecutor(spec, config))
            self.metrics.track_runs(api.executor.counts)
        self.executor: Serving | TrainingExecutor = api.executor
        routes: list[tuple[str, str, Handler]] = [
            *api.routes(),
            ("GET", "/health", self.health),
            ("GET", "/openapi.json", self.openapi),
            ("GET", "/metrics", self.metrics_text),
        ]
        self._routes = [(method, template, _compile(template), handler) for method, template, handler in routes]

    async def start(self) -> None:
        await self.executor.start()

    async def close(self) -> None:
        await self.executor.close()

    async def handle(self, request: Request) -> Reply:
        """Answer one request; never raises, always JSON on error."""
        started = time.perf_counter()
        template = "unmatched"
        try:
            template, handler, params = self._route(request)
            reply = await handler(request, params)
        except HTTPError as e:
            reply = self._error(e)
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            self.metrics.errors.labels("internal_error").inc()
            body = {"error": "internal_error", "message": "nb2svc failed unexpectedly; see the service log"}
            reply = Reply.json(body, 500)
        self.metrics.observe(template, request.method, reply.status, time.perf_counter() - started)
        return reply

    def refuse(self, request: Request, error: HTTPError) -> Reply:
        """Answer a request an adapter stopped before the core saw it (a body over the limit)."""
        try:
            template = self._route(request)[0]
        except HTTPError:
            template = "unmatched"
        self.metrics.observe(template, request.method, error.status, 0.0)
        return self._error(error)

    def _error(self, e: HTTPError) -> Reply:
        self.metrics.errors.labels(e.body["error"]).inc()
        return Reply.json(e.body, e.status)

    def _route(self, request: Request) -> tuple[str, Handler, dict[str, str]]:
        allowed = False
        for method, template, pattern, handler in self._routes:
            m = pattern.fullmatch(request.path)
            if m:
                if method == request.method:
                    return template, handler, m.groupdict()
                allowed = True
        if allowed:
            raise HTTPError(405, "method_not_allowed", f"no route {request.method} {request.path}")
        raise HTTPError(404, "not_found", f"no route {request.method} {request.path}")

    def parameters(self, request: Request) -> dict[str, Any]:
        """The request's parameters, validated and typed; a 400, 413 or 422 otherwise."""
        if len(request.body) > self.config.max_body:
            raise too_large(self.config.max_body)
        return self.validate(parse_json_body(request.body))

    async def health(self, request: Request, params: dict[str, str]) -> Reply:
        state = self.executor.state
        body: dict[str, Any] = {"status": state, "kind": self.spec.kind, "notebook": self.spec.notebook.name}
        if self.executor.setup_error:
            body["error"] = self.executor.setup_error
        return Reply.json(body, 200 if state == "ok" else 503)

    async def openapi(self, request: Request, params: dict[str, str]) -> Reply:
        return Reply(200, self._openapi)

    async def metrics_text(self, request: Request, params: dict[str, str]) -> Reply:
        return Reply(200, self.metrics.render(), CONTENT_TYPE)


def _compile(template: str) -> re.Pattern[str]:
    """``/runs/{id}/artifacts/{path:path}`` → a regex with named groups."""
    regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", template)
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
    return re.compile(regex)


class _ServingAPI:
    def __init__(self, core: Core, executor: Serving) -> None:
        self.core = core
        self.executor = executor

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/invoke", self.invoke)]

    async def invoke(self, request: Request, params: dict[str, str]) -> Reply:
        return Reply.json(await self.executor.invoke(self.core.parameters(request)))


class _TrainingAPI:
    def __init__(self, core: Core, executor: TrainingExecutor) -> None:
        self.core = core
        self.executor = executor

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/runs", self.start_run),
            ("GET", "/runs", self.list_runs),
            ("GET", "/runs/{id}", self.get_run),
            ("DELETE", "/runs/{id}", self.cancel_run),
            ("GET", "/runs/{id}/notebook", self.run_notebook),
            ("GET", "/runs/{id}/artifacts/{path:path}", self.run_artifact),
        ]

    def _body(self, run: Run) -> dict[str, Any]:
        body = asdict(run)
        base = f"/runs/{run.id}"
        body["links"] = {"self": base, "notebook": f"{base}/notebook", "artifacts": f"{base}/artifacts/"}
        return body

    async def start_run(self, request: Request, params: dict[str, str]) -> Reply:
        wait = request.query.get("wait")
        try:
            seconds = float(wait) if wait is not None else 0.0
            if not 0 <= seconds <= 24 * 3600:
                raise ValueError
        except ValueError:
            raise HTTPError(
                422,
                "validation_error",
                f"wait={wait!r} is not a number of seconds",
                detail=[{"loc": ["query", "wait"], "field": "wait", "type": "invalid", "msg": "expected number"}],
            ) from None
        run = self.executor.submit(self.core.parameters(request))
        if seconds:
            run = await self.executor.wait(run.id, seconds)
        return Reply.json(self._body(run), 200 if run.done else 202, {"Location": f"/runs/{run.id}"})

    async def list_runs(self, request: Request, params: dict[str, str]) -> Reply:
        runs = sorted(self.executor.runs.values(), key=lambda r: r.created_at, reverse=True)
        return Reply.json([self._body(r) for r in runs])

    async def get_run(self, request: Request, params: dict[str, str]) -> Reply:
        return Reply.json(self._body(self.executor.get(params["id"])))

    async def cancel_run(self, request: Request, params: dict[str, str]) -> Reply:
        run = self.executor.cancel(params["id"])
        return Reply.json(self._body(await self.executor.wait(run.id, 10)))

    async def run_notebook(self, request: Request, params: dict[str, str]) -> Reply:
        run = self.executor.get(params["id"])
        path = self.executor.store.notebook(run.id)
        if not path.is_file():
            raise HTTPError(404, "not_found", f"run {run.id} has not started yet; no executed notebook")
        name = f"{self.core.spec.name}-{run.id}.ipynb"
        return Reply(
            200,
            content_type="application/x-ipynb+json",
            file=path,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    async def run_artifact(self, request: Request, params: dict[str, str]) -> Reply:
        run = self.executor.get(params["id"])
        path = self.executor.store.artifact(run.id, params["path"])
        if path is None:
            raise HTTPError(404, "not_found", f"run {run.id} has no artifact {params['path']!r}")
        return Reply(200, content_type="application/octet-stream", file=path)
