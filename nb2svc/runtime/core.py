"""The HTTP contract (SPEC section 2), free of any web framework.

:class:`Core` takes a :class:`Request` (method, path, query, headers, body bytes) and returns a
:class:`Reply`. Every backend is a thin adapter over it: the ASGI app behind `nb2svc serve`
(app.py), and later the OpenFaaS handler and the Kernel Gateway endpoint cells. Validation,
execution, outputs, errors and metrics live here once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ..openapi import openapi_document
from ..spec import ServiceSpec
from ..types import is_path
from .config import Config
from .errors import HTTPError
from .http import Handler, Reply, Request, too_large
from .inprocess import InProcessExecutor
from .metrics import CONTENT_TYPE, Metrics
from .predictions import new_id
from .predictions.feedback import FeedbackReader, service_meta
from .predictions.recorder import LogSettings, LogUnavailable, Recorder
from .serving import ServingExecutor
from .validation import Validator

if TYPE_CHECKING:  # imported where a training service is made: papermill costs a serving start 0.5 s
    from .references import References
    from .runs_api import TrainingAPI
    from .training import TrainingExecutor

__all__ = ["Core", "Handler", "Reply", "Request", "Serving", "too_large"]

log = logging.getLogger("nb2svc.core")
_encode = msgspec.json.Encoder().encode
INSTANCE_HEADER = "X-Nb2svc-Instance"
PREDICTION_HEADER = "X-Prediction-Id"
_PARSE_INLINE = 64 * 1024  # bytes: a larger body is parsed and validated off the event loop
_TAKES_PARAMETERS = frozenset({("POST", "/invoke"), ("POST", "/runs")})


class Serving(Protocol):
    """What runs a serving notebook: worker processes (ServingExecutor) or this process (InProcessExecutor)."""

    @property
    def state(self) -> str: ...
    @property
    def setup_error(self) -> dict[str, Any] | None: ...

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def invoke(self, values: dict[str, Any]) -> dict[str, Any]: ...


class Core:
    """One notebook's service: start it, hand it requests, close it."""

    def __init__(self, spec: ServiceSpec, config: Config, serving: Serving | None = None) -> None:
        self.spec = spec
        self.config = config
        self.validate = Validator(spec)
        self.metrics = Metrics()
        self._openapi = json.dumps(openapi_document(spec), separators=(",", ":")).encode()
        api: _ServingAPI | TrainingAPI
        self.predictions: Recorder | None = None  # serving: the prediction log's buffer and writer
        self.references: References | None = None  # serving: Path parameters, fetched before the worker sees them
        if spec.kind == "serving" and any(is_path(p.type) for p in spec.parameters):
            from .references import References

            self.references = References(spec, config)
        if spec.kind == "serving":
            if serving is None:  # NB2SVC_WORKERS=0 trades crash isolation and timeouts for one process hop less
                serving = InProcessExecutor(spec, config) if config.workers == 0 else ServingExecutor(spec, config)
            api = _ServingAPI(self, serving)
            self.predictions = api.recorder
            self.metrics.track_predictions(api.recorder)
        else:
            from .runs_api import TrainingAPI
            from .training import TrainingExecutor

            api = TrainingAPI(TrainingExecutor(spec, config), self.parameters, spec.name)
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
        if self.predictions is not None:
            self.predictions.start()  # connects in its own thread: an unreachable log never delays serving
        await self.executor.start()

    async def close(self) -> None:
        await self.executor.close()
        if self.predictions is not None:
            await asyncio.to_thread(self.predictions.close)  # writes what is buffered, for a few seconds at most

    async def handle(self, request: Request) -> Reply:
        """Answer one request; never raises, always JSON on error."""
        started = time.perf_counter()
        template = "unmatched"
        scratch = None
        try:
            template, handler, params = self._route(request)
            if template == "/invoke" and isinstance(self.executor, ServingExecutor):
                self.executor.expect()  # the worker wakes while the body is checked
            if len(request.body) > _PARSE_INLINE and (request.method, template) in _TAKES_PARAMETERS:
                # A large body is read and checked in a thread: other requests (and /health) go on meanwhile.
                request = replace(request, values=await asyncio.to_thread(self.parameters, request))
            if self.references is not None and (request.method, template) == ("POST", "/invoke"):
                scratch = tempfile.mkdtemp(prefix="nb2svc-inputs-")  # removed once answered
                sent = self.parameters(request)
                request = replace(request, values=await self.references.bind(sent, Path(scratch)), sent=sent)
            reply = await handler(request, params)
        except HTTPError as e:
            reply = self._error(e)
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            reply = self._error(internal_error())
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        self.metrics.observe(template, request.method, reply.status, time.perf_counter() - started)
        reply.headers[INSTANCE_HEADER] = self.config.instance
        return reply

    def refuse(self, request: Request, error: HTTPError) -> Reply:
        """Answer a request an adapter stopped before the core saw it (a body over the limit)."""
        try:
            template = self._route(request)[0]
        except HTTPError:
            template = "unmatched"
        self.metrics.observe(template, request.method, error.status, 0.0)
        return self.error_reply(error)

    def error_reply(self, error: HTTPError) -> Reply:
        """The JSON answer for ``error``, counted in the metrics, naming this instance."""
        reply = self._error(error)
        reply.headers[INSTANCE_HEADER] = self.config.instance
        return reply

    def _error(self, e: HTTPError) -> Reply:
        self.metrics.errors.labels(e.body["error"]).inc()
        return Reply.json(e.body, e.status, dict(e.headers))

    def _route(self, request: Request) -> tuple[str, Handler, dict[str, str]]:
        allowed: list[str] = []
        wanted = "GET" if request.method == "HEAD" else request.method  # HEAD: a GET whose body is not sent
        if "\x00" not in request.path:  # %00: no route, file or run has a NUL in its name
            for method, template, pattern, handler in self._routes:
                m = pattern.fullmatch(request.path)
                if m:
                    if method == wanted:
                        return template, handler, m.groupdict()
                    allowed.extend(("GET", "HEAD") if method == "GET" else (method,))
        where = request.path.replace("\x00", "%00")
        if allowed:
            raise HTTPError(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {where}; use {' or '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        raise HTTPError(404, "not_found", f"no route {request.method} {where}")

    def parameters(self, request: Request) -> dict[str, Any]:
        """The request's parameters, validated and typed; a 400, 413 or 422 otherwise."""
        if request.values is not None:
            return request.values
        if len(request.body) > self.config.max_body:
            raise too_large(self.config.max_body)
        return self.validate.parse(request.body)

    async def health(self, request: Request, params: dict[str, str]) -> Reply:
        state = self.executor.state
        body: dict[str, Any] = {"status": state, "kind": self.spec.kind, "notebook": self.spec.notebook.name}
        if self.executor.setup_error:
            body["error"] = self.executor.setup_error
        workers = getattr(self.executor, "workers", None)
        if callable(workers):
            body["workers"] = workers()
        return Reply.json(body, 200 if state == "ok" else 503)

    async def openapi(self, request: Request, params: dict[str, str]) -> Reply:
        return Reply(200, self._openapi)

    async def metrics_text(self, request: Request, params: dict[str, str]) -> Reply:
        return Reply(200, self.metrics.render(), CONTENT_TYPE)


def internal_error() -> HTTPError:
    """nb2svc itself failed (the cause is in the log): a 500 that shows no traceback."""
    return HTTPError(500, "internal_error", "nb2svc failed unexpectedly; see the service log")


def _compile(template: str) -> re.Pattern[str]:
    """``/runs/{id}/artifacts/{path:path}`` → a regex with named groups."""
    regex = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", template)
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
    return re.compile(regex)


class _ServingAPI:
    """``POST /invoke`` (each answer logged off the request path, named by X-Prediction-Id) and ``POST /feedback``."""

    def __init__(self, core: Core, executor: Serving) -> None:
        self.core = core
        self.executor = executor
        config, spec = core.config, core.spec
        settings = LogSettings(config.log_url, config.log_sample, config.log_buffer, max(config.max_body, 1 << 20))
        self.recorder = Recorder(settings, spec.name, service_meta(spec, config.image))
        self._feedback = FeedbackReader(spec)
        # every parameter's value as the notebook sees it: the request's over the notebook's literal defaults
        self._defaults = {p.name: p.default for p in spec.parameters if p.has_default}

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/invoke", self.invoke), ("POST", "/feedback", self.feedback)]

    async def invoke(self, request: Request, params: dict[str, str]) -> Reply:
        values = self.core.parameters(request)
        started = time.perf_counter()
        # The answer is JSON data already (to_jsonable refused NaN, a worker's answer was JSON): msgspec writes it
        # 4-5x faster than json.dumps, which Reply.json keeps for bodies that could hold a NaN.
        reply = Reply(200, _encode(await self.executor.invoke(values)))
        latency = time.perf_counter() - started
        prediction_id = new_id()
        reply.headers[PREDICTION_HEADER] = prediction_id
        if self.recorder.sampled():
            self.recorder.record(
                prediction_id,
                {**self._defaults, **(values if request.sent is None else request.sent)},  # the URL, not the copy
                reply.body,
                latency,
                self.core.config.instance,
                self.core.config.image,
                len(request.body) + len(reply.body),
            )
        return reply

    async def feedback(self, request: Request, params: dict[str, str]) -> Reply:
        if len(request.body) > self.core.config.max_body:
            raise too_large(self.core.config.max_body)
        prediction_id, truth = self._feedback.parse(request.body)
        try:
            found = await asyncio.to_thread(self.recorder.feedback, prediction_id, truth)
        except LogUnavailable as e:
            raise HTTPError(503, "log_unavailable", f"{e}; retry later") from None
        if not found:
            why = (
                "the prediction log is off (NB2SVC_LOG_URL=off)"
                if not self.recorder.enabled
                else "no logged prediction has this id (unknown, or not sampled: NB2SVC_LOG_SAMPLE)"
            )
            raise HTTPError(404, "unknown_prediction", f"prediction {prediction_id[:64]!r}: {why}")
        return Reply(204, content_type="application/json")
