"""Run files on a disk: ``NB2SVC_RUNS_DIR/{id}/notebook.ipynb`` and ``artifacts/``.

With the Redis store this folder is a volume every replica mounts (one node's folder, or a ReadWriteMany
volume): a run writes there as it goes, and any replica serves what it wrote.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from . import Problem


def writable_problem(root: Path) -> Problem | None:
    """Why runs can't be kept under ``root`` (a folder this user can't make or write, e.g. a mount), else None."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".nb2svc-write-check-{uuid.uuid4().hex[:8]}"
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        return {
            "error": "runs_dir_unwritable",
            "message": f"cannot keep runs in {root}: {e.strerror or e}",
            "hint": f"give it a folder user {os.getuid()} can write: set NB2SVC_RUNS_DIR, "
            f"or `chown {os.getuid()}` the folder mounted there",
        }
    return None


def safe_file(base: Path, rel: str) -> Path | None:
    """``base/rel`` if it is a file inside ``base`` (no ``..``, no link out of it), else None."""
    base = base.resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path


def list_files(base: Path) -> list[str]:
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()) if base.is_dir() else []


class DiskStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def problem(self) -> Problem | None:
        return writable_problem(self.root)

    def work_dir(self, run_id: str) -> Path:
        return self.root / run_id

    async def publish(self, run_id: str) -> None:
        return None  # written in place

    async def notebook(self, run_id: str) -> Path | None:
        path = self.work_dir(run_id) / "notebook.ipynb"
        return path if path.is_file() else None

    async def artifact(self, run_id: str, rel: str) -> Path | None:
        return safe_file(self.work_dir(run_id) / "artifacts", rel)

    async def delete(self, run_id: str) -> None:
        shutil.rmtree(self.work_dir(run_id), ignore_errors=True)
