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
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
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


async def point_artifacts(km: AsyncKernelManager, path: Path, timeout: float = 60) -> None:
    """Set NB2SVC_ARTIFACTS in the kernel before the notebook runs, off the record (a silent execute).

    Waits in short steps, checking the kernel is alive: a cancel kills it at any moment.
    """
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=timeout)
        code = f"__import__('os').environ['NB2SVC_ARTIFACTS'] = {str(path)!r}"
        msg_id = kc.execute(code, silent=True, store_history=False)
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = await kc.get_shell_msg(timeout=0.5)
            except queue.Empty:
                if not await km.is_alive():
                    raise RuntimeError("the kernel died") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the kernel did not answer within {timeout:g} s") from None
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"the kernel refused to set NB2SVC_ARTIFACTS: {reply['content'].get('evalue')}")
    finally:
        kc.stop_channels()
