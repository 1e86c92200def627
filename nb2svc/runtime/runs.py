"""Training runs on disk: one folder a run, so a restarted service keeps every finished run.

RUNS_DIR/<id>/run.json        the record (status, parameters, outputs, error, times), strict JSON
RUNS_DIR/<id>/input.ipynb     the notebook as it is run (parameters injected as literals)
RUNS_DIR/<id>/notebook.ipynb  the executed notebook (written as it runs)
RUNS_DIR/<id>/artifacts/      $NB2SVC_ARTIFACTS for the run
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("nb2svc.runs")

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def _not_json(name: str) -> Any:
    raise ValueError(f"it holds {name}, which is not JSON")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Run:
    id: str
    status: str
    parameters: dict[str, Any]
    created_at: str
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    artifacts: list[str] = field(default_factory=list)
    instance: str | None = None  # the instance that executed it (NB2SVC_INSTANCE, else the host name)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def problem(self) -> dict[str, str] | None:
        """Why runs can't be kept here (a folder this user can't make or write, e.g. a mount), else None."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".nb2svc-write-check-{uuid.uuid4().hex[:8]}"
            probe.mkdir()
            probe.rmdir()
        except OSError as e:
            return {
                "error": "runs_dir_unwritable",
                "message": f"cannot keep runs in {self.root}: {e.strerror or e}",
                "hint": f"give it a folder user {os.getuid()} can write: set NB2SVC_RUNS_DIR, "
                f"or `chown {os.getuid()}` the folder mounted there",
            }
        return None

    def new(self, parameters: dict[str, Any]) -> Run:
        run = Run(id=uuid.uuid4().hex[:16], status="queued", parameters=parameters, created_at=now())
        self.dir(run.id).mkdir()
        self.artifacts_dir(run.id).mkdir()
        self.save(run)
        return run

    def delete(self, run_id: str) -> None:
        shutil.rmtree(self.dir(run_id), ignore_errors=True)

    def dir(self, run_id: str) -> Path:
        return self.root / run_id

    def artifacts_dir(self, run_id: str) -> Path:
        return self.dir(run_id) / "artifacts"

    def notebook(self, run_id: str) -> Path:
        return self.dir(run_id) / "notebook.ipynb"

    def save(self, run: Run) -> None:
        """Write the record atomically: a crash mid-write never leaves a half record."""
        if run.done:
            run.artifacts = self.list_artifacts(run.id)
        tmp = self.dir(run.id) / "run.json.tmp"
        tmp.write_text(json.dumps(asdict(run), indent=1, allow_nan=False))  # NaN is not JSON: a ValueError
        os.replace(tmp, self.dir(run.id) / "run.json")

    def load_all(self) -> list[Run]:
        runs = []
        for path in self.root.glob("*/run.json"):
            try:
                # An older version could write NaN or Infinity: not JSON, and no value the schema allows,
                # so such a record is left out (as null it would claim values the run never had).
                runs.append(Run(**json.loads(path.read_text(), parse_constant=_not_json)))
            except (OSError, ValueError, TypeError) as e:
                log.warning("%s is left out: %s; fix or remove it", path, e)
        return sorted(runs, key=lambda r: r.created_at)

    def list_artifacts(self, run_id: str) -> list[str]:
        base = self.artifacts_dir(run_id)
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    def artifact(self, run_id: str, rel: str) -> Path | None:
        """The artifact's path, or None if it is missing or outside the run's folder."""
        base = self.artifacts_dir(run_id).resolve()
        path = (base / rel).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            return None
        return path
