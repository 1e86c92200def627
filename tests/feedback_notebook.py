"""The serving notebook the feedback and monitor tests log predictions of: a number, a Literal, a list, a str."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

PARAMETERS = """\
x: float = 0.0  # a number
colour: Literal["red", "green", "blue"] = "red"  # a category
features: list[float] = [0.0, 0.0]  # tested per position
note: str = ""  # free text"""
OUTPUTS = """\
label: str = "pos" if x + sum(features) > 0 else "neg"
score: float = x + sum(features)
shade: Literal["red", "green", "blue"] = colour"""


def write_scorer(folder: Path) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        new_code_cell("from typing import Literal"),
        new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
        new_code_cell(OUTPUTS, metadata={"tags": ["outputs"]}),
    ]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"scorer-{i}"
    path = folder / "scorer.ipynb"
    nbformat.write(nb, path)
    return path
