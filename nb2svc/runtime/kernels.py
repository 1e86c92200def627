"""The kernels training runs on: the service's own Python (this interpreter's ipykernel), started ahead.

Whatever a notebook's kernelspec is named (``conda-env-recommenders-py``), it runs on this
Python. Kernels talk over IPC sockets whose files live in a folder only this user can open
(no TCP, so no "running over TCP without encryption" in every run's log).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

log = logging.getLogger("nb2svc.training")

KERNEL_NAME = "python3"  # what the executed notebook says it ran on: any Jupyter's Python 3 re-runs it


class KernelPool:
    """Kernels started ahead of need; each is handed out once and shut down after its run.

    Kernels are async-managed on the service's event loop; papermill drives them from a worker
    thread through nbclient's async client, which notices a killed kernel (the blocking client
    would wait on it forever).
    """

    def __init__(self, cwd: Path, size: int) -> None:
        self.cwd = cwd
        self.size = size
        self._ready: list[AsyncKernelManager] = []
        self._starting = 0
        # Sockets and connection files in a folder of our own (mkdtemp: mode 0700), never on TCP.
        self._dir = Path(tempfile.mkdtemp(prefix="nb2svc-kernels-"))
        spec = self._dir / "kernels" / KERNEL_NAME
        spec.mkdir(parents=True)
        # No SQLite input history: a service's kernels need none, it costs ~1 ms a cell here, and $HOME may be
        # read-only or shared by many kernels at once (IPython keeps the history in memory instead).
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--HistoryManager.enabled=False"]
        (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
        self._specs = KernelSpecManager(kernel_dirs=[str(self._dir / "kernels")])

    async def _start(self) -> AsyncKernelManager:
        name = uuid.uuid4().hex[:8]
        km = AsyncKernelManager(
            kernel_name=KERNEL_NAME,
            kernel_spec_manager=self._specs,
            transport="ipc",
            ip=str(self._dir / name),
            connection_file=str(self._dir / f"{name}.json"),
        )
        await km.start_kernel(cwd=str(self.cwd))
        kc = km.client()
        kc.start_channels()
        try:  # in the pool only once it answers: a run then finds it ready, not still importing ipykernel
            await ready(kc, timeout=60)
        except BaseException:
            kc.stop_channels()
            await shutdown(km)
            raise
        kc.stop_channels()
        return km

    async def fill(self) -> None:
        while len(self._ready) + self._starting < self.size:
            self._starting += 1
            try:
                km = await self._start()
            except Exception as e:  # each run then starts its own and reports why
                log.error("could not start a warm kernel: %s", e)
                return
            finally:
                self._starting -= 1
            self._ready.append(km)

    async def take(self) -> AsyncKernelManager:
        if self._ready:
            return self._ready.pop(0)
        return await self._start()

    async def close(self) -> None:
        kms, self._ready = self._ready, []
        for km in kms:
            await shutdown(km)
        shutil.rmtree(self._dir, ignore_errors=True)


async def ready(kc: Any, timeout: float, code: str | None = None) -> None:
    """Wait until the kernel answers on this client's shell channel and its IOPub carries messages.

    What jupyter_client's ``wait_for_ready`` checks, without its closing wait for 0.2 s of IOPub silence, paid on
    every call: IOPub is known to be connected once it carries the kernel's ``idle`` for this very request (ZMQ's
    late-joining subscriber can miss it; the request is then sent again), and all it carried before was drained.
    The request is ``kernel_info``, or, given ``code``, a silent execute of it (sent again with the request, so it
    must be idempotent): one round trip that also does a job.
    """
    deadline = time.monotonic() + timeout
    while True:
        msg_id = kc.kernel_info() if code is None else kc.execute(code, silent=True, store_history=False)
        reply = await _answer(kc.get_shell_msg, msg_id, lambda m: True, 1.0)
        if reply is not None and await _answer(kc.get_iopub_msg, msg_id, _idle, 0.2) is not None:
            if code is None:
                kc._handle_kernel_info_reply(reply)
            elif reply["content"].get("status") != "ok":
                raise RuntimeError(f"the kernel could not run {code!r}: {reply['content'].get('evalue', '')}")
            return
        if not await kc.is_alive():
            raise RuntimeError("the kernel died before it answered")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the kernel did not answer within {timeout:g} s")


def _idle(msg: dict[str, Any]) -> bool:
    return bool(msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle")


async def _answer(get: Any, msg_id: str, want: Any, timeout: float) -> dict[str, Any] | None:
    """The first message on a channel answering ``msg_id`` for which ``want`` holds, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg: dict[str, Any] = await get(timeout=left)
        except queue.Empty:
            return None
        if msg["parent_header"].get("msg_id") == msg_id and want(msg):
            return msg
    return None


async def shutdown(km: AsyncKernelManager) -> None:
    with contextlib.suppress(Exception):  # already dead, or its files already gone
        await km.shutdown_kernel(now=True)


def kill(km: AsyncKernelManager) -> None:
    """Kill the kernel and what it started: nbclient then stops the run with DeadKernelError."""
    pgid = getattr(km.provisioner, "pgid", None)
    pid = getattr(km.provisioner, "pid", None)
    with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
        if pgid:
            os.killpg(pgid, signal.SIGKILL)
        elif pid:
            os.kill(pid, signal.SIGKILL)


class KernelStartError(RuntimeError):
    """The run's kernel did not become ready (killed by a cancel or timeout as it started, or broken)."""


async def prepare(kc: Any, artifacts: Path, timeout: float = 60) -> None:
    """Make ``kc`` ready, setting NB2SVC_ARTIFACTS in its kernel off the record on the way.

    The silent execute that sets it is the request ``ready`` waits on: one kernel round trip, not two before the
    notebook's first cell (~3.5 ms each here).
    ``KernelStartError`` when the kernel does not answer (killed by a cancel or timeout as it started, or broken).
    """
    try:
        await ready(kc, timeout=timeout, code=f"__import__('os').environ['NB2SVC_ARTIFACTS'] = {str(artifacts)!r}")
    except Exception as e:
        raise KernelStartError(str(e)) from e
