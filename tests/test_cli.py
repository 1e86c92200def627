"""The `nb2svc` command as users run it: output, messages and exit codes (0, 1, 2, 3)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nb2svc import inspect_notebook, openapi_document
from nb2svc.client import convert
from nb2svc.errors import CallError

from .conftest import NOTEBOOKS, Service, free_port


def nb2svc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nb2svc.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_inspect_prints_the_typed_api_as_a_table() -> None:
    r = nb2svc("inspect", str(NOTEBOOKS / "all_types.ipynb"))
    assert r.returncode == 0, r.stderr
    for text in ["features", "list[float]", "Literal['adam', 'sgd']", "dict[str, float]", "Optional[str]", "yes"]:
        assert text in r.stdout
    assert "Outputs" in r.stdout and "the sum times epochs" in r.stdout
    # piped: the title lines are not padded with spaces to the table's width
    assert "Parameters" in r.stdout.splitlines() and "Outputs" in r.stdout.splitlines()


def test_inspect_json_and_openapi() -> None:
    spec = inspect_notebook(NOTEBOOKS / "all_types.ipynb")
    as_json = json.loads(nb2svc("inspect", "--json", str(NOTEBOOKS / "all_types.ipynb")).stdout)
    assert as_json["input_schema"] == spec.input_schema()
    assert [p["name"] for p in as_json["parameters"]][:2] == ["epochs", "lr"]
    openapi = json.loads(nb2svc("inspect", "--openapi", str(NOTEBOOKS / "all_types.ipynb")).stdout)
    assert openapi == json.loads(json.dumps(openapi_document(spec)))


def test_a_bad_notebook_exits_1_with_one_line_and_a_hint() -> None:
    r = nb2svc("inspect", str(NOTEBOOKS / "unsupported.ipynb"))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[0] == "Error: unsupported.ipynb: parameter 'd' (cell 1, line 3): type 'Decimal' is not supported"
    assert lines[1].startswith("  hint: use int, float")
    assert "Traceback" not in r.stderr


def test_debug_shows_the_traceback() -> None:
    r = nb2svc("--debug", "inspect", str(NOTEBOOKS / "untyped.ipynb"))
    assert r.returncode == 1 and "Traceback" in r.stderr


@pytest.mark.parametrize(
    "args",
    [["inspect"], ["inspect", "--kind", "batch", "x.ipynb"], ["frobnicate"], ["call", "http://x", "-p", "novalue"]],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert nb2svc(*args).returncode == 2


def test_missing_notebook_exits_1() -> None:
    r = nb2svc("inspect", "nowhere.ipynb")
    assert r.returncode == 1 and "nowhere.ipynb: cannot read the notebook" in r.stderr


@pytest.mark.slow
def test_call_types_values_from_the_services_openapi(serve: Callable[..., Service]) -> None:
    svc = serve(NOTEBOOKS / "all_types.ipynb")
    r = nb2svc(
        "call",
        svc.url,
        "-p",
        "features=1,2",
        "-p",
        "epochs=3",
        "-p",
        "note=null",
        "-p",
        'weights={"x": 2}',
        "-p",
        "verbose=yes",
        "-p",
        "optimizer=sgd",
        "-p",
        "tag=007",
    )
    assert r.returncode == 0, r.stderr
    echo = json.loads(r.stdout)["echo"]
    assert (echo["features"], echo["epochs"], echo["note"], echo["weights"]) == ([1.0, 2.0], 3, None, {"x": 2.0})
    assert (echo["verbose"], echo["optimizer"], echo["tag"]) == (True, "sgd", "007")  # a str stays a str

    bad = nb2svc("call", svc.url, "-p", "epochs=many", "-p", "features=[1]")
    assert bad.returncode == 1 and "parameter 'epochs': 'many' is not an integer" in bad.stderr
    unknown = nb2svc("call", svc.url, "-p", "color=red")
    assert unknown.returncode == 1 and "unknown parameter 'color'" in unknown.stderr
    refused = nb2svc("call", svc.url, "--json", '{"features": "x"}')
    assert refused.returncode == 1 and "features: expected array" in refused.stderr
    nan = nb2svc("call", svc.url, "-p", "lr=nan")
    assert nan.returncode == 1 and "'nan' is not a finite number" in nan.stderr and "unexpected" not in nan.stderr
    nan_json = nb2svc("call", svc.url, "--json", '{"lr": NaN}')
    assert nan_json.returncode == 2 and "NaN is not JSON" in nan_json.stderr, nan_json.stderr


@pytest.mark.slow
def test_call_waits_for_a_training_run(serve: Callable[..., Service], tmp_path: Path) -> None:
    svc = serve(NOTEBOOKS / "training.ipynb", {"NB2SVC_RUNS_DIR": str(tmp_path)})
    r = nb2svc("call", svc.url, "-p", "steps=10")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)
    assert run["status"] == "succeeded" and run["outputs"]["loss"] == 0.1
    r = nb2svc("call", svc.url, "--no-wait", "-p", "sleep=1")
    assert json.loads(r.stdout)["status"] in {"queued", "running"}
    failed = nb2svc("call", svc.url, "-p", "fail=true")
    assert failed.returncode == 1 and "asked to fail" in failed.stderr  # the notebook is the user's input


def test_call_to_nothing_exits_3() -> None:
    r = nb2svc("call", f"http://127.0.0.1:{free_port()}", "-p", "x=1")
    assert r.returncode == 3 and r.stderr.startswith("Error: cannot reach")


@pytest.mark.parametrize(
    ("schema", "raw", "value"),
    [
        ({"type": "integer"}, "007", 7),
        ({"type": "number"}, "1e-3", 0.001),
        ({"type": "boolean"}, "False", False),
        ({"type": "string"}, "[1,2]", "[1,2]"),
        ({"type": "array", "items": {"type": "integer"}}, "[1, 2]", [1, 2]),
        ({"type": "array", "items": {"type": "integer"}}, "1,2", [1, 2]),
        ({"type": "object"}, '{"a": 1}', {"a": 1}),
        ({"type": ["integer", "null"]}, "none", None),
        ({"type": ["integer", "null"]}, "4", 4),
        ({"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "null"}]}, "1.5,2", [1.5, 2.0]),
        ({"enum": ["adam", "sgd"]}, "sgd", "sgd"),
        ({"enum": [1, 2]}, "2", 2),
    ],
)
def test_convert(schema: dict[str, Any], raw: str, value: Any) -> None:
    assert convert("p", raw, schema) == value


@pytest.mark.parametrize(
    ("schema", "raw"),
    [
        ({"type": "integer"}, "1.5"),
        ({"type": "boolean"}, "maybe"),
        ({"enum": ["a"]}, "b"),
        ({"type": "object"}, "{"),
        ({"type": "number"}, "nan"),
        ({"type": "number"}, "-inf"),
        ({"type": "object"}, '{"a": NaN}'),
    ],
)
def test_convert_refuses(schema: dict[str, Any], raw: str) -> None:
    with pytest.raises(CallError, match="parameter 'p'"):
        convert("p", raw, schema)
