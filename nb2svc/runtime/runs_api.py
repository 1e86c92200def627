"""Training's HTTP routes (SPEC section 2): start, list, read, cancel and delete runs; notebooks and artifacts."""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ..openapi import CURSOR_PATTERN, MAX_PAGE, MAX_WAIT_S, PAGE
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
            ("DELETE", "/runs/{id}", self.delete_run),
            ("POST", "/runs/{id}/cancel", self.cancel_run),
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
        except ValueError:
            seconds = math.nan
        if not 0 <= seconds <= MAX_WAIT_S:  # NaN too
            raise _bad_query("wait", f"wait={wait!r} is not a number of seconds from 0 to {MAX_WAIT_S}")
        run = await self.executor.submit(self.parameters(request))
        if seconds:
            run = await self.executor.wait(run.id, seconds)
        return Reply.json(self._body(run), 200 if run.done else 202, {"Location": f"/runs/{run.id}"})

    async def list_runs(self, request: Request, params: dict[str, str]) -> Reply:
        """A page of runs, newest first; the next page's address is in a ``Link: <...>; rel="next"`` header."""
        raw_limit = request.query.get("limit", str(PAGE))
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            raise _bad_query("limit", f"limit={raw_limit!r} is not a whole number from 1 to {MAX_PAGE}")
        cursor = request.query.get("cursor")
        runs = await self.executor.page(limit + 1, _read_cursor(cursor) if cursor is not None else None)
        page = runs[:limit]
        headers = {}
        if len(runs) > limit:
            query = urlencode({"limit": limit, "cursor": _cursor(page[-1])})
            headers["Link"] = f'</runs?{query}>; rel="next"'
        return Reply.json([self._body(r) for r in page], headers=headers)

    async def get_run(self, request: Request, params: dict[str, str]) -> Reply:
        return Reply.json(self._body(await self.executor.get(params["id"])))

    async def cancel_run(self, request: Request, params: dict[str, str]) -> Reply:
        run = await self.executor.cancel(params["id"])
        return Reply.json(self._body(await self.executor.wait(run.id, 10)))

    async def delete_run(self, request: Request, params: dict[str, str]) -> Reply:
        """Cancel if needed, delete the run and its files; the answer is its final record."""
        return Reply.json(self._body(await self.executor.delete(params["id"])))

    async def run_notebook(self, request: Request, params: dict[str, str]) -> Reply:
        run = await self.executor.get(params["id"])
        path = await _stored(self.executor.files.notebook(run.id))
        if path is None and run.status == "running":
            message = f"run {run.id} is running on another instance; its notebook is stored when it ends"
            raise HTTPError(409, "running_elsewhere", message)
        if path is None:
            when = "has not started yet" if run.status == "queued" else f"{run.status} before it started"
            raise HTTPError(409, "not_started", f"run {run.id} {when}: there is no executed notebook")
        name = f"{self.service_name}-{run.id}.ipynb"
        return Reply(
            200,
            content_type="application/x-ipynb+json",
            file=path,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    async def run_artifact(self, request: Request, params: dict[str, str]) -> Reply:
        run = await self.executor.get(params["id"])
        path = await _stored(self.executor.files.artifact(run.id, params["path"]))
        if path is None:
            raise HTTPError(404, "not_found", f"run {run.id} has no artifact {params['path']!r}")
        return Reply(200, content_type="application/octet-stream", file=path)


async def _stored(lookup: Awaitable[Path | None]) -> Path | None:
    """A run's file; object storage that cannot be reached is a 503, not a 500."""
    try:
        return await lookup
    except OSError as e:
        raise HTTPError(503, "storage_unavailable", f"the run's files cannot be read: {e}; retry later") from None


def _cursor(run: Run) -> str:
    """Where the page ended, so a deleted run does not break the next page; opaque to callers."""
    return "_".join(run.order)


def _read_cursor(cursor: str) -> tuple[str, str]:
    if re.fullmatch(CURSOR_PATTERN, cursor):
        created_at, _, run_id = cursor.rpartition("_")
        return created_at, run_id
    raise _bad_query("cursor", "cursor is not one this service gave out; follow the Link header's next page")


def _bad_query(name: str, message: str) -> HTTPError:
    return HTTPError(
        422,
        "validation_error",
        message,
        detail=[{"loc": ["query", name], "field": name, "type": "invalid", "msg": message}],
    )
