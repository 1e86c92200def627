"""HTTPError, the exception the HTTP layer turns into a JSON error body; InvalidInput, the notebook's 422."""

from __future__ import annotations

from typing import Any


class InvalidInput(ValueError):
    """Raised by a serving notebook's request cell: the caller's input is wrong (a 422), not the notebook.

    nb2svc recognises any exception class *named* ``InvalidInput`` (this one, or a notebook's own
    ``class InvalidInput(ValueError): ...``, so the notebook runs where nb2svc is not installed).
    ``field`` names the parameter at fault, when there is one.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def is_invalid_input(exc: BaseException) -> bool:
    return any(cls.__name__ == "InvalidInput" for cls in type(exc).__mro__)


class HTTPError(Exception):
    """An answer other than success: status, a machine code, a message, and optional fields."""

    def __init__(
        self, status: int, error: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.body: dict[str, Any] = {"error": error, "message": message}
        self.body.update({k: v for k, v in extra.items() if v is not None})


def invalid_input_error(cell: int, message: str, field: str | None) -> HTTPError:
    """A 422 for a request cell that raised ``InvalidInput``: the notebook's message, its field."""
    item = {"loc": ["body", field] if field else ["body"], "field": field or "", "type": "invalid", "msg": message}
    return HTTPError(422, "validation_error", message, detail=[item], cell=cell)


def notebook_error(cell: int, ename: str, evalue: str, traceback: list[str] | None, debug: bool) -> HTTPError:
    """A 500 for a raising cell: the cell, the exception's name and message; a traceback in debug."""
    return HTTPError(
        500,
        "notebook_error",
        f"cell {cell} raised {ename}: {evalue}" if evalue else f"cell {cell} raised {ename}",
        cell=cell,
        ename=ename,
        evalue=evalue,
        traceback=traceback if debug else None,
    )
