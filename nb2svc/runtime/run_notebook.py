"""The notebook a training run executes: nb2svc's own cells, the parameters as literals, papermill's engine.

The executed notebook re-runs anywhere (SPEC section 2): the injected cell holds the values as Python literals,
checked to read back as the same data, and no server path is written into any cell.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from nbclient.exceptions import CellExecutionError
from nbclient.util import ensure_async, run_hook, run_sync
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.log import logger as papermill_log
from papermill.utils import merge_kwargs, remove_args

from .kernels import prepare

# The executed notebook must re-run anywhere: the service sets NB2SVC_ARTIFACTS in the kernel
# before this cell runs (see `kernels.prepare`); elsewhere the artifacts go to ./artifacts.
PRELUDE_TAG = "nb2svc-prelude"
PRELUDE = """\
# Set by nb2svc: where the run's artifacts go (the service sets it before the run, and does not run this cell;
# elsewhere ./artifacts).
import os as _nb2svc_os
_nb2svc_os.environ.setdefault("NB2SVC_ARTIFACTS", "artifacts")
del _nb2svc_os"""

INJECT = "# Parameters injected by nb2svc: the values this run was started with."

COLLECT = """\
# Outputs collected by nb2svc.
import json as _nb2svc_json
from IPython.display import display as _nb2svc_display

def _nb2svc_plain(value):
    for method in ("tolist", "item"):
        if callable(getattr(value, method, None)):
            return getattr(value, method)()
    raise TypeError(f"a value of type {{type(value).__name__}} has no JSON form")

_nb2svc_display({{{mime}: _nb2svc_json.loads(_nb2svc_json.dumps(
    {{_n: globals()[_n] for _n in {names} if _n in globals()}}, default=_nb2svc_plain, allow_nan=False))}}, raw=True)
del _nb2svc_json, _nb2svc_display, _nb2svc_plain"""


def parameters_source(
    values: Mapping[str, Any], declared: Collection[str], fetched: Mapping[str, str] | None = None
) -> str:
    """The injected-parameters cell: one ``name = <literal>`` a value, checked to be data only.

    A reference fetched for the run (``fetched``: name → URL) is bound as the local file, the URL in a comment.
    """
    lines = [INJECT]
    for name, value in values.items():
        if name not in declared or not name.isidentifier():
            raise ValueError(f"{name!r} is not a declared parameter")
        if fetched and name in fetched:
            lines.append(f"# {name}: fetched from {python_literal(fetched[name])}")
        lines.append(f"{name} = {python_literal(value)}")
    return "\n".join(lines)


def python_literal(value: Any) -> str:
    """``value`` (JSON data) as Python source that can only be that value: checked by reading it back."""
    text = repr(value)
    try:
        same = _strict(ast.literal_eval(text)) == _strict(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        same = False
    if not same:
        raise ValueError(f"{text[:60]} is not a JSON value")
    return text


def _strict(value: Any) -> str:
    """JSON that tells 1 from 1.0 and True (``==`` does not), and refuses NaN."""
    return json.dumps(value, sort_keys=True, allow_nan=False)


class _Engine(NBClientEngine):  # type: ignore[misc]  # papermill has no type hints
    """papermill's nbclient engine, noting which cell failed and why.

    papermill's error keeps only a cell *index* (into the notebook after it drops its own
    error-marker cells) and, for a cell with no error output (a failing ``%magic``), no name
    or message at all; the cell's metadata and the kernel's own error say both.
    """

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
        failures: list[tuple[Mapping[str, Any], Any]] = kwargs.pop("nb2svc_failures")
        plain = nb_man.cell_exception

        def cell_exception(cell: Any, cell_index: int | None = None, **kw: Any) -> None:
            failures.append((cell.get("metadata", {}), kw.get("exception")))
            plain(cell, cell_index=cell_index, **kw)

        nb_man.cell_exception = cell_exception
        nb_man.cell_start = _quick_start(nb_man)
        artifacts: Path = kwargs.pop("nb2svc_artifacts")
        # papermill's own method, with its client made ready the quick way (see _Client)
        timeout = kwargs.pop("execution_timeout", None) or kwargs.get("timeout")
        startup_timeout = kwargs.pop("start_timeout", 60)
        kwargs = remove_args(["input_path", "timeout", "startup_timeout"], **kwargs)
        options = merge_kwargs(
            kwargs, timeout=timeout, startup_timeout=startup_timeout, kernel_name=kernel_name, log=papermill_log
        )
        client = _Client(nb_man, **options)
        client.artifacts = artifacts
        try:
            return client.execute()
        finally:
            _close(client.kc)


def _close(kc: Any) -> None:
    """Close a run's kernel client: nbclient leaves it open when it does not own the kernel, as here.

    Open, its sockets and its ZMQ context (13-17 descriptors) outlived the run until a full garbage collection.
    """
    if kc is None:
        return
    kc.stop_channels()
    if getattr(kc, "_created_context", False) and not kc.context.closed:
        kc.context.destroy(linger=0)


SAVE_GAP_S = 0.5


def _quick_start(nb_man: Any) -> Any:
    """papermill's ``cell_start``, not saving the notebook again when it was saved under SAVE_GAP_S ago.

    papermill writes the whole notebook as each cell starts and as it ends: ~1 ms a save for a short notebook, and
    more the longer it grows. Right after the previous cell's end was saved, the file is at most the new cell's
    "running" mark behind, and that mark is saved with the next save.
    """
    plain_start, plain_save = nb_man.cell_start, nb_man.save

    def cell_start(cell: Any, cell_index: int | None = None, **kw: Any) -> None:
        if (nb_man.now() - nb_man.last_save_time).total_seconds() >= SAVE_GAP_S:
            plain_start(cell, cell_index=cell_index, **kw)
            return
        nb_man.save = lambda **_: None
        try:
            plain_start(cell, cell_index=cell_index, **kw)
        finally:
            nb_man.save = plain_save

    return cell_start


class _Client(PapermillNotebookClient):  # type: ignore[misc]  # papermill has no type hints
    """papermill's client, whose kernel client is ready in milliseconds, not after 0.2 s of IOPub silence.

    nbclient calls jupyter_client's ``wait_for_ready`` for every notebook, even on a kernel started and answering
    long before; it waits for IOPub to stay silent 0.2 s. ``kernels.ready`` checks the same, by the kernel's answer.
    The same client then points the kernel at the run's artifacts folder.
    """

    artifacts: Path

    async def async_start_new_kernel_client(self) -> Any:
        self.kc = self.km.client()
        await ensure_async(self.kc.start_channels())
        try:
            await prepare(self.kc, self.artifacts, timeout=self.startup_timeout)
        except Exception:
            await self._async_cleanup_kernel()
            raise
        self.kc.allow_stdin = False
        await run_hook(self.on_notebook_start, notebook=self.nb)
        return self.kc

    start_new_kernel_client = run_sync(async_start_new_kernel_client)

    def papermill_execute_cells(self) -> None:
        """papermill's loop over the cells, less the prelude: its one effect is already there (``prepare``).

        Each executed cell costs ~7 ms of papermill, nbclient and ipykernel round trips; the notebook's own first
        cell starts that much sooner. The prelude stays in the executed notebook, so it re-runs anywhere.
        """
        for index, cell in enumerate(self.nb.cells):
            if PRELUDE_TAG in cell.get("metadata", {}).get("tags", ()):
                meta = cell.metadata.papermill
                meta["start_time"] = meta["end_time"] = self.nb_man.now().isoformat()
                meta.update(duration=0.0, status=self.nb_man.COMPLETED, exception=False)
                continue
            try:
                self.nb_man.cell_start(cell, index)
                self.execute_cell(cell, index)
            except CellExecutionError as ex:
                self.nb_man.cell_exception(self.nb.cells[index], cell_index=index, exception=ex)
                break
            finally:
                self.nb_man.cell_complete(self.nb.cells[index], cell_index=index)


papermill_engines.register("nb2svc", _Engine)
