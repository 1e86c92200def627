"""Training's HTTP routes (SPEC section 2): start, list, read, cancel and delete runs; notebooks and artifacts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from .errors import HTTPError
from .http import Handler, Reply, Request
from .runs import Run
from .training import TrainingExecutor


class TrainingAPI:
    """The ``/runs`` routes over a :class:`TrainingExecutor`."""

    def __init__(
        self, executor: TrainingExecutor, parameters: Callable[[Request], dict[str, Any]], service_name: str
    ) -> None:
        self.executor = executor
        self.parameters = parameters  # the request's values, validated (the core's check)
        self.service_name = service_name

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
        run = self.executor.submit(self.parameters(request))
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
        name = f"{self.service_name}-{run.id}.ipynb"
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
