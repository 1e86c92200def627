"""Stage 1: read an .ipynb into a :class:`NotebookInfo` (cells, tags, metadata, dependencies)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NotebookError

PARAMETERS_TAG = "parameters"
OUTPUTS_TAG = "outputs"

# `%pip install x`, `!pip install x`, `!python -m pip install x`, `%conda` is not supported
_PIP_LINE = re.compile(r"^\s*[%!]\s*(?:python3?\s+-m\s+)?pip3?\s+install\s+(?P<args>.*)$")


@dataclass(frozen=True)
class Cell:
    """A code cell; ``number`` is its 1-based position among all the notebook's cells."""

    number: int
    index: int
    source: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class NotebookInfo:
    path: Path
    sha256: str
    cells: tuple[Cell, ...]  # code cells only, in order
    metadata: Mapping[str, Any]  # the notebook's metadata.nb2svc
    requirements: tuple[str, ...]  # from %pip lines, then requirements.txt, duplicates dropped
    kernel_name: str = "python3"

    @property
    def name(self) -> str:
        return self.path.stem

    def tagged(self, tag: str) -> list[Cell]:
        return [c for c in self.cells if tag in c.tags]


def load_notebook(path: str | Path) -> NotebookInfo:
    """Read and check the notebook file; the errors name the file and say what to do."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise NotebookError(f"{p}: cannot read the notebook: {e.strerror}") from e
    try:
        nb = _read(data)
    except Exception as e:  # json and nbformat raise several unrelated types for bad files
        raise NotebookError(f"{p}: not a readable Jupyter notebook: {e}", "open and save it in Jupyter") from e
    _check_language(p.name, nb)
    cells = tuple(
        Cell(
            number=i + 1,
            index=i,
            source=_source(c),
            tags=tuple(c.get("metadata", {}).get("tags", ())),
        )
        for i, c in enumerate(nb["cells"])
        if c.get("cell_type") == "code"
    )
    meta = nb["metadata"].get("nb2svc", {})
    if not isinstance(meta, Mapping):
        raise NotebookError(f"{p}: metadata.nb2svc must be an object, not {type(meta).__name__}")
    reqs = [r for c in cells for r in pip_requirements(c.source)]
    req_file = p.parent / "requirements.txt"
    if req_file.is_file():
        reqs += read_requirements_file(req_file)
    kernel = (nb["metadata"].get("kernelspec") or {}).get("name") or "python3"
    return NotebookInfo(
        path=p.resolve(),
        sha256=hashlib.sha256(data).hexdigest(),
        cells=cells,
        metadata=dict(meta),
        requirements=tuple(dict.fromkeys(reqs)),
        kernel_name=kernel,
    )


def _read(data: bytes) -> dict[str, Any]:
    """The notebook as JSON. A version 4 notebook (what Jupyter saves) is read as it is, without nbformat: its
    import costs seconds (jsonschema's format checkers), which every `nb2svc` command and every start would pay.
    Older versions go through nbformat's converters."""
    text = data.decode("utf-8")
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("the file holds JSON, but not a notebook object")
    if doc.get("nbformat") != 4:
        import nbformat

        doc = dict(nbformat.reads(text, as_version=4))
    if not isinstance(doc.get("cells"), list) or not all(isinstance(c, dict) for c in doc["cells"]):
        raise ValueError("it has no list of cells")
    if not isinstance(doc.setdefault("metadata", {}), dict):
        raise ValueError("its metadata is not an object")
    for c in doc["cells"]:
        if not isinstance(c.setdefault("metadata", {}), dict):
            raise ValueError("a cell's metadata is not an object")
    return doc


def _source(cell: Mapping[str, Any]) -> str:
    """A cell's source: hand-written JSON may leave the key out (nbformat does not fill it in)."""
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _check_language(name: str, nb: Mapping[str, Any]) -> None:
    """nb2svc runs notebooks on its own Python kernel, whatever their kernelspec is named; other languages stop here."""
    spec = nb["metadata"].get("kernelspec") or {}
    languages = [spec.get("language"), (nb["metadata"].get("language_info") or {}).get("name")]
    other = next((lang for lang in languages if isinstance(lang, str) and lang.lower() != "python"), None)
    if other is not None:
        kernel = f" (kernel {spec['name']!r})" if spec.get("name") else ""
        raise NotebookError(
            f"{name}: its language is {other}{kernel}; nb2svc compiles Python notebooks only",
            "nb2svc runs notebooks on a Python kernel (ipykernel); rewrite the notebook in Python",
        )


def pip_requirements(source: str) -> list[str]:
    """The requirements named by the ``%pip install`` / ``!pip install`` lines of a cell."""
    reqs: list[str] = []
    for line in source.splitlines():
        m = _PIP_LINE.match(line)
        if not m:
            continue
        words = shlex.split(m.group("args"), comments=True)
        skip_next = False
        for w in words:
            if skip_next:
                skip_next = False
            elif w in {"-r", "-c", "-i", "--index-url", "--extra-index-url", "-f", "--find-links"}:
                skip_next = True
            elif not w.startswith("-"):
                reqs.append(w)
    return reqs


def strip_pip_lines(source: str) -> str:
    """The cell with its install lines turned into comments: the image installs them at build."""
    return "\n".join(
        f"# nb2svc: installed at build time: {line.strip()}" if _PIP_LINE.match(line) else line
        for line in source.splitlines()
    )


def read_requirements_file(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out
