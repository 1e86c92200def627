"""Stage 2: a :class:`NotebookInfo` becomes the frozen :class:`ServiceSpec` everything downstream reads."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .cells import Declaration, check_syntax, read_outputs, read_parameters
from .errors import NotebookError, SpecError
from .notebook import OUTPUTS_TAG, PARAMETERS_TAG, Cell, NotebookInfo, load_notebook
from .types import JSON

Kind = Literal["serving", "training"]
KINDS: tuple[Kind, ...] = ("serving", "training")
KALE_PARAMETERS_TAG = "pipeline-parameters"  # Kubeflow Kale's tag for the cell papermill calls `parameters`
_QUANTITY = re.compile(r"\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T|k|m)?")
# A Debian/Ubuntu package name, optionally pinned (``libgomp1``, ``ffmpeg=7:5.1.6-0+deb12u1``):
# the names go into an apt-get command line, so nothing else gets through.
_SYSTEM_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:_-]+)?")  # whole names: fullmatch
SYSTEM_PACKAGE_HINT = "use names like libgomp1 or ffmpeg, optionally pinned: name=version"


def not_a_system_package(packages: Iterable[str]) -> str | None:
    """The first of ``packages`` that is not a Debian package name, else None."""
    return next((p for p in packages if not _SYSTEM_PACKAGE.fullmatch(p)), None)


@dataclass(frozen=True)
class Resources:
    """What ``metadata.nb2svc`` asks of the machine; reaches the image, run command and manifests."""

    gpu: bool = False
    memory: str | None = None  # Kubernetes quantity, e.g. "2Gi"
    cpu: str | None = None  # e.g. "1" or "500m"
    timeout: float | None = None  # seconds per request (serving) or per run (training)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    notebook: Path
    sha256: str
    kind: Kind
    kernel_name: str
    parameters: tuple[Declaration, ...]
    outputs: tuple[Declaration, ...]
    parameters_cell: Cell
    outputs_cell: Cell | None
    setup_cells: tuple[Cell, ...]  # above the parameters cell
    request_cells: tuple[Cell, ...]  # below it, the outputs cell included
    requirements: tuple[str, ...]
    resources: Resources
    system_packages: tuple[str, ...] = ()  # metadata.nb2svc.system_packages: apt packages for the image
    # metadata.nb2svc.card: the model card (model type, task, framework, owner, ...), shown as written
    card: Mapping[str, JSON] = field(default_factory=dict)

    def parameter(self, name: str) -> Declaration | None:
        return next((p for p in self.parameters if p.name == name), None)

    def input_schema(self) -> dict[str, JSON]:
        """JSON Schema (2020-12) of a request body: unknown fields are rejected."""
        props = {p.name: _property(p) for p in self.parameters}
        schema: dict[str, JSON] = {
            "title": "Parameters",
            "type": "object",
            "properties": props,
            "additionalProperties": False,
        }
        required = [p.name for p in self.parameters if p.required]
        if required:
            schema["required"] = required
        return schema

    def output_schema(self) -> dict[str, JSON]:
        return {
            "title": "Outputs",
            "type": "object",
            "properties": {o.name: _property(o) for o in self.outputs},
            "required": [o.name for o in self.outputs],
            "additionalProperties": self.kind == "training",  # scrapbook glue adds names
        }

    def to_dict(self) -> dict[str, JSON]:
        """The spec as ``nb2svc inspect --json`` prints it."""
        return {
            "name": self.name,
            "notebook": str(self.notebook),
            "sha256": self.sha256,
            "kind": self.kind,
            "parameters": [_decl_dict(p) for p in self.parameters],
            "outputs": [_decl_dict(o) for o in self.outputs],
            "cells": {
                "setup": [c.number for c in self.setup_cells],
                "parameters": self.parameters_cell.number,
                "request": [c.number for c in self.request_cells],
                "outputs": self.outputs_cell.number if self.outputs_cell else None,
            },
            "requirements": list(self.requirements),
            "system_packages": list(self.system_packages),
            "card": dict(self.card),
            "resources": {
                "gpu": self.resources.gpu,
                "memory": self.resources.memory,
                "cpu": self.resources.cpu,
                "timeout": self.resources.timeout,
            },
            "input_schema": self.input_schema(),
            "output_schema": self.output_schema(),
        }


def _property(d: Declaration) -> dict[str, JSON]:
    s = d.type.schema()
    if d.help:  # before what the type says of itself (a Path's URL schemes)
        s["description"] = f"{d.help}. {s['description']}" if "description" in s else d.help
    if d.has_default:
        if d.required:
            s["examples"] = [d.default]
        else:
            s["default"] = d.default
    elif d.default_source:
        s["description"] = (s.get("description", "") + f" (default: computed as `{d.default_source}`)").strip()
    return s


def _decl_dict(d: Declaration) -> dict[str, JSON]:
    out: dict[str, JSON] = {"name": d.name, "type": d.type.python(), "help": d.help, "line": d.line}
    if d.default_source:
        out["required"] = d.required
        out["default"] = d.default if d.has_default else None
        out["default_source"] = d.default_source
    return out


def build_spec(nb: NotebookInfo, kind: str | None = None) -> ServiceSpec:
    """Check the notebook contract and type every parameter and output."""
    name = nb.path.name
    kind = kind or nb.metadata.get("kind") or "serving"
    if kind not in KINDS:
        raise NotebookError(f"{name}: kind {kind!r} is unknown", "use 'serving' or 'training'")
    params_cells = nb.tagged(PARAMETERS_TAG)
    if not params_cells:
        kale = nb.tagged(KALE_PARAMETERS_TAG)
        hint = "tag the cell that assigns the inputs with 'parameters' (View > Cell Toolbar > Tags in Jupyter)"
        if kale:
            hint = f"cell {kale[0].number} is tagged 'pipeline-parameters' (Kubeflow Kale's name): tag it 'parameters'"
        raise NotebookError(f"{name}: no cell is tagged 'parameters'", hint)
    if len(params_cells) > 1:
        raise NotebookError(
            f"{name}: {len(params_cells)} cells are tagged 'parameters' (cells {_numbers(params_cells)})",
            "keep the tag on one cell",
        )
    pcell = params_cells[0]
    out_cells = nb.tagged(OUTPUTS_TAG)
    if len(out_cells) > 1:
        raise NotebookError(
            f"{name}: {len(out_cells)} cells are tagged 'outputs' (cells {_numbers(out_cells)})",
            "keep the tag on one cell",
        )
    ocell = out_cells[0] if out_cells else None
    if ocell is not None and ocell.index < pcell.index:
        raise NotebookError(
            f"{name}: the outputs cell (cell {ocell.number}) is above the parameters cell (cell {pcell.number})",
            "outputs are computed from the parameters: move the outputs cell below",
        )
    if ocell is None and kind == "serving":
        raise NotebookError(
            f"{name}: a serving notebook needs a cell tagged 'outputs'",
            "tag the cell that assigns the response, e.g. `label: str = ...`",
        )
    params = tuple(read_parameters(pcell, name))
    outputs = tuple(read_outputs(ocell, name)) if ocell else ()
    for cell in nb.cells:
        if cell is not pcell and cell is not ocell:
            check_syntax(cell, name)
    return ServiceSpec(
        name=nb.name,
        notebook=nb.path,
        sha256=nb.sha256,
        kind=kind,
        kernel_name=nb.kernel_name,
        parameters=params,
        outputs=outputs,
        parameters_cell=pcell,
        outputs_cell=ocell,
        setup_cells=tuple(c for c in nb.cells if c.index < pcell.index),
        request_cells=tuple(c for c in nb.cells if c.index > pcell.index),
        requirements=nb.requirements,
        resources=_resources(nb.metadata, name),
        system_packages=_system_packages(nb.metadata, name),
        card=_card(nb.metadata, name),
    )


def _numbers(cells: list[Cell]) -> str:
    return ", ".join(str(c.number) for c in cells)


_METADATA_KEYS = {"kind", "gpu", "memory", "cpu", "timeout", "system_packages", "card"}


def _card(meta: dict[str, Any] | Any, nb_name: str) -> dict[str, JSON]:
    card = meta.get("card", {})
    if not isinstance(card, dict) or not all(isinstance(k, str) for k in card):
        raise SpecError(
            f"{nb_name}: metadata.nb2svc.card = {card!r} is not valid",
            'use a mapping, e.g. {"model_type": "k-nearest neighbours", "task": "classification", "owner": "ml-team"}',
        )
    return dict(card)


def _system_packages(meta: dict[str, Any] | Any, nb_name: str) -> tuple[str, ...]:
    packages = meta.get("system_packages", [])
    if not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
        raise SpecError(
            f"{nb_name}: metadata.nb2svc.system_packages = {packages!r} is not valid",
            'use a list of Debian package names, e.g. ["libgomp1"]',
        )
    bad = not_a_system_package(packages)
    if bad is not None:
        raise SpecError(
            f"{nb_name}: metadata.nb2svc.system_packages: {bad!r} is not a Debian package name", SYSTEM_PACKAGE_HINT
        )
    return tuple(dict.fromkeys(packages))


def _resources(meta: dict[str, Any] | Any, nb_name: str) -> Resources:
    def bad(key: str, want: str) -> SpecError:
        return SpecError(f"{nb_name}: metadata.nb2svc.{key} = {meta[key]!r} is not valid", f"use {want}")

    unknown = sorted(set(meta) - _METADATA_KEYS)
    if unknown:
        raise SpecError(
            f"{nb_name}: metadata.nb2svc has unknown key(s) {', '.join(map(repr, unknown))}",
            f"known keys: {', '.join(sorted(_METADATA_KEYS))}",
        )
    gpu = meta.get("gpu", False)
    if not isinstance(gpu, bool):
        raise bad("gpu", "true or false")
    res: dict[str, Any] = {"gpu": gpu}
    for key in ("memory", "cpu"):
        if key in meta:
            v = str(meta[key])
            if not _QUANTITY.fullmatch(v):
                raise bad(key, "a quantity like '2Gi' or '500m'")
            res[key] = v
    if "timeout" in meta:
        t = meta["timeout"]
        if isinstance(t, bool) or not isinstance(t, int | float) or t <= 0:
            raise bad("timeout", "a number of seconds")
        res["timeout"] = float(t)
    return Resources(**res)


def inspect_notebook(path: str | Path, kind: str | None = None) -> ServiceSpec:
    """Read a notebook and compile its typed spec: the library entry point behind `nb2svc inspect`."""
    return build_spec(load_notebook(path), kind)
