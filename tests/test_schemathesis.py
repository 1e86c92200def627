"""schemathesis, every check, against a serving and a training service's own OpenAPI document: 0 failures.

Bounded: a fixed seed, a capped number of examples per operation, a per-request timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import NOTEBOOKS

pytestmark = pytest.mark.slow

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.parametrize(
    ("notebook", "env", "examples"),
    [
        ("all_types.ipynb", {"NB2SVC_WORKERS": "1"}, 60),
        ("training.ipynb", {"NB2SVC_MAX_QUEUE": "1000", "NB2SVC_TIMEOUT": "60"}, 8),
    ],
)
def test_schemathesis_finds_nothing(
    serve: Any, tmp_path: Path, notebook: str, env: dict[str, str], examples: int
) -> None:
    svc = serve(NOTEBOOKS / notebook, {**env, "NB2SVC_RUNS_DIR": str(tmp_path / "runs")})
    r = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{svc.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(examples),
            "--seed",
            "1",
            "--request-timeout",
            "120",
            "--max-response-time",
            "120",  # POST /runs?wait= answers when the run ends: as long as the notebook takes
            "--generation-database",
            "none",
            "--workers",
            "1",
            # every warning but missing_test_data: POST /feedback answers 404 to the ids it makes up, as it must
            "--warnings",
            "missing_auth,base_url_mismatch,validation_mismatch,missing_deserializer,unused_openapi_auth,"
            "unsupported_regex,method_not_allowed",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # its own files (reports, caches) stay out of the checkout
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "No issues found" in r.stdout
