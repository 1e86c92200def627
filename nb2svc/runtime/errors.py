"""The one exception the HTTP layer turns into a JSON error body."""

from __future__ import annotations

from typing import Any


class HTTPError(Exception):
    """An answer other than success: status, a machine code, a message, and optional fields."""

    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"error": error, "message": message}
        self.body.update({k: v for k, v in extra.items() if v is not None})


def notebook_error(cell: int, ename: str, evalue: str, traceback: list[str] | None, debug: bool) -> HTTPError:
    """A 500 for a raising cell: the cell, the exception's name and message; a traceback in debug."""
    return HTTPError(
        500,
        "notebook_error",
        f"cell {cell} raised {ename}: {evalue}",
        cell=cell,
        ename=ename,
        evalue=evalue,
        traceback=traceback if debug else None,
    )
