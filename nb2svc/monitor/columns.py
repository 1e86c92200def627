"""Parameters → columns the drift tests compare: numbers, categories, and lists position by position."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..types import ListOf, Scalar, Type
from ..types import Literal as LiteralType
from ..types import Optional as OptionalType

Kind = Literal["numeric", "categorical"]
MAX_POSITIONS = 100  # columns one list parameter becomes at most (features[0] ... features[99])
_INDEX = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True)
class Column:
    name: str  # "lr", "features[3]", "features[0][12]"
    kind: Kind
    values: tuple[Any, ...]  # floats (numeric) or JSON texts (categorical)


def kind_of(t: Type) -> Kind | ListOf | None:
    while isinstance(t, OptionalType):
        t = t.inner
    match t:
        case Scalar("int") | Scalar("float"):
            return "numeric"
        case Scalar("bool") | Scalar("str") | LiteralType():
            return "categorical"
        case ListOf():
            return t
    return None  # dicts and untyped values are not tested


def flatten(prefix: str, t: Type, samples: Sequence[Any], budget: list[int] | None = None) -> dict[str, Column]:
    """The columns of ``samples`` (values of type ``t``), named from ``prefix``."""
    budget = [MAX_POSITIONS] if budget is None else budget
    k = kind_of(t)
    if k == "numeric":
        values = tuple(float(v) for v in samples if isinstance(v, int | float) and not isinstance(v, bool))
        return {prefix: Column(prefix, "numeric", values)}
    if k == "categorical":
        return {prefix: Column(prefix, "categorical", tuple(json.dumps(v) for v in samples if v is not None))}
    if isinstance(k, ListOf):
        lists = [s for s in samples if isinstance(s, list)]
        width = max((len(s) for s in lists), default=0)
        out: dict[str, Column] = {}
        for i in range(width):
            if budget[0] <= 0:
                break
            inner = flatten(f"{prefix}[{i}]", k.item, [s[i] for s in lists if len(s) > i], budget)
            if kind_of(k.item) in ("numeric", "categorical"):
                budget[0] -= 1
            out.update(inner)
        return out
    return {}


def type_at(path: str, types: Mapping[str, Type]) -> tuple[str, Type] | None:
    """``"features[0]"`` → ("features[0]", the item type of ``features``); None for a name no parameter has."""
    name = path.split("[", 1)[0]
    if name not in types:
        return None
    t: Type = types[name]
    for _ in _INDEX.findall(path[len(name) :]):
        while isinstance(t, OptionalType):
            t = t.inner
        if not isinstance(t, ListOf):
            return None
        t = t.item
    return path, t


def parameter_columns(types: Mapping[str, Type], rows: Iterable[Mapping[str, Any]]) -> dict[str, Column]:
    """Every testable column of logged parameter objects."""
    rows = list(rows)
    out: dict[str, Column] = {}
    for name, t in types.items():
        out.update(flatten(name, t, [r.get(name) for r in rows]))
    return out


def profile_columns(types: Mapping[str, Type], profile: Mapping[str, Sequence[Any]]) -> dict[str, Column]:
    """The columns of a training profile (``nb2svc.profile.write_profile``'s ``columns``)."""
    out: dict[str, Column] = {}
    for path, samples in profile.items():
        found = type_at(path, types)
        if found is not None:
            out.update(flatten(found[0], found[1], list(samples)))
    return out
