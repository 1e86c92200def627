"""Notebook → typed spec → JSON Schema and OpenAPI, and the compile errors users see."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from openapi_spec_validator import validate

from nb2svc import NotebookError, SpecError, inspect_notebook, openapi_document
from nb2svc.spec import ServiceSpec

from .conftest import NOTEBOOKS


def notebook(tmp_path: Path, *cells: tuple[str, str] | str, name: str = "nb", **meta: object) -> Path:
    nb = new_notebook()
    if meta:
        nb.metadata["nb2svc"] = meta
    for c in cells:
        tags, src = c if isinstance(c, tuple) else ("", c)
        nb.cells.append(new_code_cell(src, metadata={"tags": [t for t in tags.split(",") if t]}))
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def test_every_type_of_the_contract_reaches_the_spec() -> None:
    spec = inspect_notebook(NOTEBOOKS / "all_types.ipynb")
    types = {p.name: p.type.python() for p in spec.parameters}
    assert types == {
        "epochs": "int",
        "lr": "float",
        "optimizer": "Literal['adam', 'sgd']",
        "layers": "list[int]",
        "features": "list[float]",
        "note": "Optional[str]",
        "weights": "dict[str, float]",
        "verbose": "bool",
        "tag": "str",
        "sizes": "list[int]",
        "limit": "Optional[int]",
    }
    features = spec.parameter("features")
    assert features is not None and features.required and features.help == "one flower's measurements"
    schema = spec.input_schema()
    assert schema["required"] == ["features"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["features"]["examples"] == [[5.1, 3.5, 1.4, 0.2]]  # the default becomes the example
    assert "default" not in schema["properties"]["features"]
    assert schema["properties"]["epochs"] == {"type": "integer", "description": "passes over the data", "default": 5}
    assert [c.number for c in spec.setup_cells] == [2, 3]  # cell 1 is markdown: numbers count every cell
    assert [c.number for c in spec.request_cells] == [5, 6]
    assert [o.name for o in spec.outputs] == ["echo", "total", "setup_count", "pid"]


@pytest.mark.parametrize("name", ["all_types", "training", "raises"])
def test_openapi_documents_are_valid_3_1(name: str) -> None:
    doc = openapi_document(inspect_notebook(NOTEBOOKS / f"{name}.ipynb"))
    validate(doc)
    assert doc["openapi"] == "3.1.0"


def test_openapi_lists_every_status_with_a_json_body() -> None:
    doc = openapi_document(inspect_notebook(NOTEBOOKS / "all_types.ipynb"))
    responses = doc["paths"]["/invoke"]["post"]["responses"]
    assert set(responses) >= {"200", "400", "413", "422", "500", "503"}
    for status, resp in responses.items():
        assert "application/json" in resp["content"], status
    props = doc["components"]["schemas"]["Parameters"]["properties"]
    assert props["lr"]["description"] == "learning rate"
    training = openapi_document(inspect_notebook(NOTEBOOKS / "training.ipynb"))
    assert set(training["paths"]) >= {"/runs", "/runs/{id}", "/runs/{id}/notebook", "/runs/{id}/artifacts/{path}"}
    assert set(training["paths"]["/runs"]["post"]["responses"]) >= {"202", "400", "413", "422"}


@pytest.mark.parametrize(
    ("fixture", "error", "message"),
    [
        ("no_parameters", NotebookError, r"no_parameters.ipynb: no cell is tagged 'parameters'"),
        ("two_parameters", NotebookError, r"2 cells are tagged 'parameters' \(cells 1, 2\)"),
        ("untyped", SpecError, r"parameter 'x' \(cell 1, line 1\): a default of None says nothing of the type"),
        ("unsupported", SpecError, r"parameter 'd' \(cell 1, line 3\): type 'Decimal' is not supported"),
        ("syntax_error", SpecError, r"parameters cell \(cell 1, line 2\): syntax error"),
        ("no_outputs", NotebookError, r"a serving notebook needs a cell tagged 'outputs'"),
    ],
)
def test_compile_errors_name_the_notebook_cell_and_line(fixture: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message) as info:
        inspect_notebook(NOTEBOOKS / f"{fixture}.ipynb")
    assert info.value.hint  # type: ignore[attr-defined]  # every compile error says what to do


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x: int = 'five'", r"parameter 'x' \(cell 1, line 1\): the default 'five' does not fit the annotation int"),
        ("x: int", "has no default value"),
        ("a, b = 1, 2", "is not a parameter assignment"),
        ("x = 1\nx = 2", "assigned twice"),
        ("n = len('abc')", "its type cannot be known"),
        ("x: list[int] = []\ny = []", r"parameter 'y' \(cell 1, line 2\): an empty list"),
        ("x = [1, 'a']", "mixes types"),
        ("x: int | str = 1", "only unions with None"),
        ("print('hi')", "is not a parameter assignment"),
    ],
)
def test_parameter_lines_that_cannot_be_typed(tmp_path: Path, source: str, message: str) -> None:
    path = notebook(tmp_path, ("parameters", source), ("outputs", "y: int = 1"))
    with pytest.raises(SpecError, match=message):
        inspect_notebook(path)


def test_papermill_conventions_it_goes_beyond(tmp_path: Path) -> None:
    """Lines papermill's regex drops (Literal, `x = dict(a=1)`, `#` in a string) are read right."""
    src = (
        "import typing\n"
        "mode: typing.Literal['a', 'b'] = 'b'  # choose\n"
        "opts: dict[str, int] = dict(a=1)  # computed default\n"
        "url = 'http://x/#frag'  # a hash inside the string\n"
        "limit: int | None = None\n"
        "n: int = 2 * 3\n"
        "size = 3  # required\n"
    )
    spec = inspect_notebook(notebook(tmp_path, ("parameters", src), ("outputs", "y: int = 1")))
    got = {p.name: (p.type.python(), p.default if p.has_default else p.default_source, p.help) for p in spec.parameters}
    assert got == {
        "mode": ("Literal['a', 'b']", "b", "choose"),
        "opts": ("dict[str, int]", "dict(a=1)", "computed default"),
        "url": ("str", "http://x/#frag", "a hash inside the string"),
        "limit": ("Optional[int]", None, ""),
        "n": ("int", "2 * 3", ""),
        "size": ("int", 3, ""),
    }
    assert spec.parameter("size").required  # type: ignore[union-attr]
    assert "computed as `dict(a=1)`" in spec.input_schema()["properties"]["opts"]["description"]


def test_kind_resources_and_requirements(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("numpy==2.1.0  # pinned\n# a comment\nrequests\n")
    path = notebook(
        tmp_path,
        "%pip install scikit-learn==1.5.0 'pandas>=2' -q\n!pip install requests",
        ("parameters", "x: int = 1"),
        kind="training",
        gpu=True,
        memory="2Gi",
        cpu="500m",
        timeout=120,
    )
    spec = inspect_notebook(path)
    assert spec.kind == "training"
    assert spec.requirements == ("scikit-learn==1.5.0", "pandas>=2", "requests", "numpy==2.1.0")
    assert (spec.resources.gpu, spec.resources.memory, spec.resources.cpu, spec.resources.timeout) == (
        True,
        "2Gi",
        "500m",
        120.0,
    )
    with pytest.raises(NotebookError, match="kind 'batch' is unknown"):
        inspect_notebook(path, kind="batch")


def test_bad_resources_are_named(tmp_path: Path) -> None:
    path = notebook(tmp_path, ("parameters", "x: int = 1"), ("outputs", "y: int = x"), memory="lots")
    with pytest.raises(SpecError, match=r"metadata.nb2svc.memory = 'lots' is not valid"):
        inspect_notebook(path)
    newline = notebook(tmp_path, ("parameters", "x: int = 1"), ("outputs", "y: int = x"), name="nl", cpu="1\n")
    with pytest.raises(SpecError, match=r"metadata.nb2svc.cpu = '1\\n' is not valid"):
        inspect_notebook(newline)  # the whole value is checked: it goes into labels and manifests
    typo = notebook(tmp_path, ("parameters", "x: int = 1"), ("outputs", "y: int = x"), name="typo", gpus=1)
    with pytest.raises(SpecError, match=r"metadata.nb2svc has unknown key\(s\) 'gpus'"):
        inspect_notebook(typo)


def test_outputs_cell_rules(tmp_path: Path) -> None:
    unannotated = notebook(tmp_path, ("parameters", "x: int = 1"), ("outputs", "y = x"), name="a")
    with pytest.raises(SpecError, match=r"output 'y' \(cell 2, line 1\): has no type annotation"):
        inspect_notebook(unannotated)
    above = notebook(tmp_path, ("outputs", "y: int = 1"), ("parameters", "x: int = 1"), name="b")
    with pytest.raises(NotebookError, match="is above the parameters cell"):
        inspect_notebook(above)


def test_not_a_notebook(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{not json")
    with pytest.raises(NotebookError, match=r"bad.ipynb: not a readable Jupyter notebook"):
        inspect_notebook(bad)


def test_spec_is_frozen() -> None:
    spec = inspect_notebook(NOTEBOOKS / "raises.ipynb")
    assert isinstance(spec, ServiceSpec)
    with pytest.raises(AttributeError):
        spec.kind = "training"  # type: ignore[misc]


def test_a_syntax_error_in_any_code_cell_fails_inspect_naming_cell_and_line() -> None:
    """Cell 2 (magics, shell lines) compiles after IPython's transforms; cell 3's stray `)` is caught."""
    with pytest.raises(SpecError, match=r"syntax_error_below.ipynb: cell 3, line 2: syntax error: unmatched '\)'") as e:
        inspect_notebook(NOTEBOOKS / "syntax_error_below.ipynb")
    assert e.value.hint


def test_type_comments_type_a_parameter_as_papermill_reads_them(tmp_path: Path) -> None:
    src = "rate = 1  # type: float\nname = None  # type: Optional[str]  # who asks\nn = 2  # type: ignore\n"
    spec = inspect_notebook(notebook(tmp_path, ("parameters", src), ("outputs", "y = rate  # type: float")))
    got = {p.name: (p.type.python(), p.default, p.help) for p in spec.parameters}
    assert got == {"rate": ("float", 1, ""), "name": ("Optional[str]", None, "who asks"), "n": ("int", 2, "")}
    assert [o.type.python() for o in spec.outputs] == ["float"]
    assert spec.input_schema()["properties"]["rate"]["type"] == "number"
    bad = notebook(tmp_path, ("parameters", "x = 1  # type: tuple[int]"), ("outputs", "y: int = 1"), name="bad")
    with pytest.raises(SpecError, match=r"parameter 'x' \(cell 1, line 1\): type 'tuple\[int\]' is not supported"):
        inspect_notebook(bad)


def test_a_code_cell_without_source_is_an_empty_cell(tmp_path: Path) -> None:
    """Hand-written JSON may leave the key out; nbformat does not fill it in."""
    cells = [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "outputs": [], "source": "x: int = 1"},
        {"cell_type": "code", "metadata": {}, "outputs": []},
        {"cell_type": "code", "metadata": {"tags": ["outputs"]}, "outputs": [], "source": ["y: int = x\n"]},
    ]
    path = tmp_path / "raw.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 4}))
    spec = inspect_notebook(path)
    assert [c.number for c in spec.request_cells] == [2, 3] and spec.request_cells[0].source == ""
    assert [o.name for o in spec.outputs] == ["y"]


def test_a_kale_pipeline_parameters_cell_gets_a_hint() -> None:
    with pytest.raises(NotebookError, match="no cell is tagged 'parameters'") as e:
        inspect_notebook(NOTEBOOKS / "kale_parameters.ipynb")
    assert "cell 1 is tagged 'pipeline-parameters'" in str(e.value.hint) and "tag it 'parameters'" in str(e.value.hint)


def test_a_notebook_in_another_language_is_refused() -> None:
    with pytest.raises(NotebookError, match=r"r_language.ipynb: its language is R \(kernel 'ir'\)") as e:
        inspect_notebook(NOTEBOOKS / "r_language.ipynb")
    assert "Python" in str(e.value.hint)


def test_a_python_notebook_from_any_environment_compiles() -> None:
    """A kernelspec named after a conda env is still Python: the service runs it on its own kernel."""
    spec = inspect_notebook(NOTEBOOKS / "broken_markers.ipynb")
    assert spec.kind == "training" and [p.name for p in spec.parameters] == ["mode"]
