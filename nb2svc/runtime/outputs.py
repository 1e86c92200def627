"""Notebook values to JSON, and the outputs a training notebook records in its cells."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# A display_data bundle of this MIME type carries a run's declared outputs (see training.py).
OUTPUTS_MIME = "application/vnd.nb2svc.outputs+json"
SCRAPBOOK_MIME = "application/scrapbook.scrap.json+json"


_INT_BITS = 14_000  # about 4,200 decimal digits: below, str() of an int always works


class NotJSONError(TypeError):
    """A value with no JSON form."""


def to_jsonable(value: Any) -> Any:
    """The JSON form of a notebook value: numpy scalars and arrays included, NaN refused."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if value.bit_length() > _INT_BITS:
            try:
                str(value)
            except ValueError:  # over sys.get_int_max_str_digits(): no JSON number can be written for it
                raise NotJSONError("an integer of over 4300 digits has no JSON form here; return it as a str") from None
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSONError(f"{value} has no JSON form")
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise NotJSONError(f"key {k!r} is not a string")
            out[k] = to_jsonable(v)
        return out
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    # numpy, torch and pandas scalars and arrays, without importing them
    for method in ("tolist", "item"):
        f = getattr(value, method, None)
        if callable(f):
            try:
                converted = f()
            except (TypeError, ValueError) as e:
                raise NotJSONError(f"{type(value).__name__} could not be converted: {e}") from None
            if converted is not value:
                return to_jsonable(converted)
    raise NotJSONError(f"a value of type {type(value).__name__} has no JSON form; convert it, e.g. with float()")


def recorded_outputs(nb: Mapping[str, Any]) -> dict[str, Any]:
    """Outputs recorded in an executed notebook: scrapbook ``glue`` scraps, then nb2svc's own bundle."""
    found: dict[str, Any] = {}
    ours: dict[str, Any] = {}
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = out.get("data", {})
            scrap = data.get(SCRAPBOOK_MIME)
            if isinstance(scrap, Mapping) and "name" in scrap:
                found[str(scrap["name"])] = scrap.get("data")
            if isinstance(data.get(OUTPUTS_MIME), Mapping):
                ours.update(data[OUTPUTS_MIME])
    found.update(ours)
    return found
