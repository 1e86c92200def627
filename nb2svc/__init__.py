"""nb2svc: compile a Jupyter notebook into a typed HTTP function.

The public names load on first use, so a process that needs one module (the serving worker,
`nb2svc --version`) does not pay for importing nbformat and jsonschema.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "InvalidInput": "runtime.errors",
    "Nb2svcError": "errors",
    "NotebookError": "errors",
    "SpecError": "errors",
    "NotebookInfo": "notebook",
    "load_notebook": "notebook",
    "openapi_document": "openapi",
    "ServiceSpec": "spec",
    "build_spec": "spec",
    "inspect_notebook": "spec",
}

__all__ = [
    "InvalidInput",
    "Nb2svcError",
    "NotebookError",
    "NotebookInfo",
    "ServiceSpec",
    "SpecError",
    "__version__",
    "build_spec",
    "inspect_notebook",
    "load_notebook",
    "openapi_document",
]

if TYPE_CHECKING:
    from .errors import Nb2svcError, NotebookError, SpecError
    from .notebook import NotebookInfo, load_notebook
    from .openapi import openapi_document
    from .runtime.errors import InvalidInput
    from .spec import ServiceSpec, build_spec, inspect_notebook


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
