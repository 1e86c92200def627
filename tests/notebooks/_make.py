"""Writes the fixture notebooks of tests/notebooks: one per case. Run it after editing a case.

python tests/notebooks/_make.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

Cells = list[tuple[str, str] | str]  # "source" or (tags, source); tags comma-separated


PYTHON3 = {"name": "python3", "display_name": "Python 3", "language": "python"}


def write(name: str, cells: Cells, kernelspec: dict[str, str] = PYTHON3, **nb2svc: object) -> None:
    nb = new_notebook()
    nb.metadata["kernelspec"] = kernelspec
    if nb2svc:
        nb.metadata["nb2svc"] = nb2svc
    for c in cells:
        if isinstance(c, tuple):
            tags, src = c
            if tags == "md":
                nb.cells.append(new_markdown_cell(src))
                continue
            if tags.startswith("md,"):  # a tagged markdown cell, e.g. papermill's error markers
                nb.cells.append(new_markdown_cell(src, metadata={"tags": tags.split(",")[1:]}))
                continue
            nb.cells.append(new_code_cell(src, metadata={"tags": tags.split(",")}))
        else:
            nb.cells.append(new_code_cell(c))
    nbformat.write(nb, HERE / f"{name}.ipynb")


ALL_TYPES = """\
epochs: int = 5                       # passes over the data
lr: float = 1e-3                      # learning rate
optimizer: Literal["adam", "sgd"] = "adam"
layers: list[int] = [64, 32]
features: list[float] = [5.1, 3.5, 1.4, 0.2]   # required: one flower's measurements
note: Optional[str] = None
weights: dict[str, float] = {"a": 1.0}
verbose: bool = False
tag = "v1"                            # untyped: a str from its default
sizes = [1, 2]
limit: int | None = None
"""


def main() -> None:
    write(
        "all_types",
        [
            ("md", "# Every parameter type"),
            "from typing import Literal, Optional\nSETUP_PID = __import__('os').getpid()\nsetup_runs = 0",
            "setup_runs += 1",
            ("parameters", ALL_TYPES),
            "echo = dict(epochs=epochs, lr=lr, optimizer=optimizer, layers=layers, features=features,\n"
            "            note=note, weights=weights, verbose=verbose, tag=tag, sizes=sizes, limit=limit)",
            (
                "outputs",
                "echo: dict = echo\ntotal: float = sum(features) * epochs  # the sum times epochs\n"
                "setup_count: int = setup_runs\npid: int = SETUP_PID",
            ),
        ],
    )
    write(
        "raises",
        [
            "import math",
            ("parameters", "x: float = 1.0"),
            "if x < 0:\n    raise ValueError(f'x must not be negative, got {x}')\ny = math.sqrt(x)",
            ("outputs", "y: float = y"),
        ],
    )
    write(
        "misbehaves",
        [
            "import os, time\nfrom typing import Literal, Optional",
            (
                "parameters",
                'mode: Literal["ok", "crash", "sleep", "nan", "wrong_type", "remember", "exit"] = "ok"\nn: int = 0',
            ),
            "if mode == 'crash':\n    os._exit(3)\nif mode == 'sleep':\n    time.sleep(30)\n"
            "if mode == 'exit':\n    raise SystemExit(1)\n"
            "if mode == 'remember':\n    remembered = n\n"
            "value = float('nan') if mode == 'nan' else ('text' if mode == 'wrong_type' else float(n))",
            ("outputs", "value: float = value\nprevious: Optional[int] = globals().get('remembered')"),
        ],
    )
    write("no_parameters", ["x = 1", ("outputs", "y: int = x")])
    write("two_parameters", [("parameters", "x = 1"), ("parameters", "y = 2"), ("outputs", "z: int = x")])
    write("untyped", [("parameters", "x = None  # nothing to infer from"), ("outputs", "y: int = 1")])
    write(
        "unsupported",
        [("parameters", "from decimal import Decimal\nx: int = 1\nd: Decimal = Decimal(1)"), ("outputs", "y: int = 1")],
    )
    write("syntax_error", [("parameters", "x: int = 1\ny: int = = 2"), ("outputs", "z: int = 1")])
    write(
        "syntax_error_below",
        [
            ("parameters", "x: int = 1"),
            "%time y = x + 1\n!echo magics and shell lines compile\nif x:\n    %ls",
            "z = y\nprint(z))",
            ("outputs", "z: int = z"),
        ],
    )
    write(
        "r_language",
        [("parameters", "x <- 1"), ("outputs", "y <- x")],
        kernelspec={"name": "ir", "display_name": "R", "language": "R"},
    )
    write("kale_parameters", [("pipeline-parameters", "x: int = 1"), ("outputs", "y: int = x")])
    # papermill's tests/notebooks/broken1.ipynb with a parameters cell, saved from a conda env
    # (its kernelspec is not installed here): error-marker cells papermill drops before it runs.
    marker = '<span style="color:red">An Exception was encountered at cell 3.</span>'
    write(
        "broken_markers",
        [
            ("md,papermill-error-cell-tag", marker),
            ("md", "A markdown cell that makes the execution counts different to indices."),
            ("md,papermill-error-cell-tag", '<span id="papermill-error-cell">Execution using papermill failed</span>'),
            "from typing import Literal",
            ("parameters", "mode: Literal['ok', 'assert', 'magic'] = 'assert'"),
            ("md", "Another markdown cell"),
            "if mode == 'magic':\n    %no_such_magic\nassert mode == 'ok'",
            "print('done')",
        ],
        kernelspec={
            "name": "conda-env-recommenders-py",
            "display_name": "Python [conda env:recommenders]",
            "language": "python",
        },
        kind="training",
    )
    write("no_outputs", [("parameters", "x: int = 1"), "y = x"])
    write(
        "setup_fails",
        ["raise RuntimeError('model file missing')", ("parameters", "x: int = 1"), ("outputs", "y: int = x")],
    )
    write(
        "training",
        [
            "import os, json, shutil, time\nfrom pathlib import Path\nfrom typing import Literal\n"
            "ARTIFACTS_AT_START = os.environ.get('NB2SVC_ARTIFACTS', '')",
            (
                "parameters",
                "steps: int = 3  # how many steps\nfail: bool = False\nsleep: float = 0.0\n"
                "message: str = 'hello'\nloss_kind: Literal['ok', 'nan', 'object'] = 'ok'\n"
                "remove_run: bool = False  # the cell deletes the run's own folder",
            ),
            "out = Path(os.environ.get('NB2SVC_ARTIFACTS', 'artifacts'))\nout.mkdir(parents=True, exist_ok=True)\n"
            "time.sleep(sleep)\nif remove_run:\n    shutil.rmtree(Path(os.environ['NB2SVC_ARTIFACTS']).parent)\n"
            "if fail:\n    raise RuntimeError('asked to fail')\n"
            "(out / 'model.json').write_text(json.dumps({'steps': steps, 'message': message}))",
            "loss = {'ok': 1.0 / steps, 'nan': float('nan'), 'object': object()}[loss_kind]",
            (
                "outputs",
                "loss: float = loss  # final loss\nechoed: str = message\nartifacts_at_start: str = ARTIFACTS_AT_START",
            ),
        ],
        kind="training",
    )
    # inputs by reference (runtime/references.py): a Path parameter, a local file in Jupyter, a URL over HTTP
    path_cells: Cells = [
        "from pathlib import Path\nfrom typing import Optional",
        ("parameters", "data: Path = 'data.csv'  # the rows to read\nextra: Optional[Path] = None"),
        "text = Path(data).read_text()\nrows = len(text.splitlines())\nfirst = text.splitlines()[0] if rows else ''",
        ("outputs", "rows: int = rows\nfirst: str = first\nlocal: str = str(data)"),
    ]
    write("path_serving", path_cells)
    write("path_training", path_cells, kind="training")
    (HERE / "data.csv").write_text("a,b\n1,2\n3,4\n")


if __name__ == "__main__":
    main()
