"""Request bodies checked against the spec's JSON Schema: the values, or every bad field named."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from ..spec import ServiceSpec
from .errors import HTTPError

_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def parse_json_body(body: bytes) -> Any:
    """An empty body means "all defaults"; anything else must be JSON, or it is a 400."""
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise HTTPError(400, "invalid_json", f"the body is not valid JSON{where}: {getattr(e, 'msg', e)}") from None


class Validator:
    """Validates parameter objects for one spec; built once per service."""

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self._schema = spec.input_schema()
        self._validator = Draft202012Validator(self._schema)

    def __call__(self, body: Any) -> dict[str, Any]:
        """The Python values for the given fields (defaults are the notebook's), or a 422."""
        if not isinstance(body, dict):
            raise HTTPError(
                422,
                "validation_error",
                f"the body must be a JSON object of parameters, not {_json_type(body)}",
                detail=[_item(["body"], "", "invalid", f"expected object, got {_json_type(body)}", "object", body)],
            )
        if not self._validator.is_valid(body):  # explaining the errors is the slow path, only taken for a 422
            detail = [d for e in self._validator.iter_errors(body) for d in self._explain(e, body)]
            fields = ", ".join(dict.fromkeys(d["field"] for d in detail))
            raise HTTPError(422, "validation_error", f"invalid parameters: {fields}", detail=detail)
        return {name: self._coerce(name, value) for name, value in body.items()}

    def _coerce(self, name: str, value: Any) -> Any:
        decl = self.spec.parameter(name)
        return value if decl is None else decl.type.coerce(value)  # unknown names are already a 422

    def _explain(self, e: ValidationError, body: dict[str, Any]) -> list[dict[str, Any]]:
        path = list(e.absolute_path)
        if e.validator == "required":
            props = set(self._schema["properties"])
            return [
                _item(["body", name], name, "missing", "field required", _describe(self._schema["properties"][name]))
                for name in e.validator_value
                if name not in body and name in props
            ]
        if e.validator == "additionalProperties" and not path:
            known = ", ".join(self._schema["properties"]) or "none"
            return [
                _item(["body", name], name, "extra_forbidden", f"unknown parameter (known: {known})", None, body[name])
                for name in body
                if name not in self._schema["properties"]
            ]
        field = str(path[0]) if path else ""
        expected = _describe(e.schema)
        return [_item(["body", *path], field, "invalid", _message(e, expected), expected, e.instance)]


def _item(loc: list[Any], field: str, kind: str, msg: str, expected: Any, value: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"loc": loc, "field": field, "type": kind, "msg": msg}
    if expected is not None:
        out["expected"] = expected
    if kind != "missing":
        out["input"] = value
    return out


def _describe(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "a valid value"
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    t = schema.get("type")
    if isinstance(t, list):
        return " or ".join(t)
    if t == "array" and isinstance(schema.get("items"), dict):
        return f"array of {_describe(schema['items'])}"
    if t == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_describe(schema['additionalProperties'])}"
    if "anyOf" in schema:
        return " or ".join(_describe(s) for s in schema["anyOf"])
    return str(t) if t else "a valid value"


def _message(e: ValidationError, expected: str) -> str:
    if e.validator in {"type", "enum", "anyOf"}:
        return f"expected {expected}, got {_json_type(e.instance)} {json.dumps(e.instance)[:80]}"
    return str(e.message)


class OutputChecker:
    """Checks a notebook's outputs against the types its outputs cell declares."""

    def __init__(self, spec: ServiceSpec) -> None:
        self._names = [o.name for o in spec.outputs]
        self._validator = Draft202012Validator(spec.output_schema())

    def problems(self, outputs: Mapping[str, Any]) -> str | None:
        """None when the outputs are as declared, else what is wrong with them, for the error body."""
        missing = [f"output {n!r} was not assigned" for n in self._names if n not in outputs]
        if missing:
            return "; ".join(missing)
        if self._validator.is_valid(outputs):
            return None
        bad = [
            f"output {'/'.join(map(str, e.absolute_path))!r}: {e.message}" for e in self._validator.iter_errors(outputs)
        ]
        return "; ".join(bad) + " (the outputs cell's annotation disagrees)"
