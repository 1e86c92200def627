"""Request bodies checked against the spec's JSON Schema: the values, or every bad field named."""

from __future__ import annotations

import contextlib
import gc
import json
import re
import typing
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

if typing.TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

from ..spec import ServiceSpec
from ..types import AnyValue, DictOf, FilePath, ListOf, Scalar, Type
from ..types import Literal as LiteralType
from ..types import Optional as OptionalType
from .errors import HTTPError

_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
MAX_DETAIL = 20  # errors listed in a 422; the rest are counted
_COUNT_CAP = 1000  # errors counted past the listed ones, so a 422 of a huge body stays cheap to make
_ECHO = 256  # bytes of JSON: a bad value longer than this is not echoed back in the 422
_MSGSPEC_AT = re.compile(r" - at `\$(.*)`$")


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _too_deep() -> HTTPError:
    return HTTPError(400, "invalid_json", "the body nests arrays or objects too deeply to be read")


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic GC paused while a body becomes objects: a million small lists would set it off again and
    again (0.55 s → 0.13 s for 1M empty lists here). Nothing made while decoding can form a cycle."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_json_body(body: bytes) -> Any:
    """Strict JSON (no NaN or Infinity, no number out of range); an empty body means "all defaults"."""
    if not body.strip():
        return {}
    try:
        with _no_gc():
            return msgspec.json.decode(body)
    except msgspec.ValidationError:  # a number no float or int holds: 1e400, 10**5000
        raise _out_of_range(None) from None
    except msgspec.DecodeError as e:
        hint = " (NaN and Infinity are not JSON numbers)" if re.search(rb"NaN|Infinity", body) else ""
        raise HTTPError(400, "invalid_json", f"the body is not valid JSON: {e}{hint}") from None
    except RecursionError:
        raise _too_deep() from None


def _out_of_range(typed: msgspec.ValidationError | None) -> HTTPError:
    """A 422 for a number no float or int holds; ``typed`` (the typed decoder's error) says where it is."""
    loc = _msgspec_loc(str(typed)) if typed is not None else []
    field = str(loc[0]) if loc else ""
    msg = "number out of range: JSON numbers here must fit a 64-bit float (and integers 4300 digits)"
    return HTTPError(
        422,
        "validation_error",
        f"invalid parameters: {field or 'a number in the body'} is out of range",
        detail=[_item(["body", *loc], field, "invalid", msg, "a finite number")],
        error_count=1,
    )


def _msgspec_loc(message: str) -> list[str | int]:
    """``... - at `$.items[0]` `` → ``["items", 0]``."""
    m = _MSGSPEC_AT.search(message)
    if not m:
        return []
    return [int(i) if i is not None and i.isdigit() else n for n, i in re.findall(r"\.(\w+)|\[(\d+)\]", m.group(1))]


class Validator:
    """Validates parameter objects for one spec; built once per service.

    The fast path decodes and checks the body in one pass with msgspec, typed from the spec. Any
    body it refuses takes the slow path: JSON Schema (the OpenAPI document's own) decides and names
    every bad field, so both paths answer alike.
    """

    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self._schema = spec.input_schema()
        self._decoder = _typed_decoder(spec)
        self._jsonschema: Draft202012Validator | None = None

    @property
    def _validator(self) -> Draft202012Validator:
        if self._jsonschema is None:  # imported on the first slow path only: jsonschema costs seconds to import
            self._jsonschema = _json_schema_validator(self._schema)
        return self._jsonschema

    def parse(self, body: bytes) -> dict[str, Any]:
        """A request body to the Python values of the given fields, or a 400 or 422."""
        typed_error: msgspec.ValidationError | None = None
        if self._decoder is not None:
            try:
                with _no_gc():
                    values = self._decoder.decode(body if body.strip() else b"{}")
                return {f: v for f in values.__struct_fields__ if (v := getattr(values, f)) is not msgspec.UNSET}
            except msgspec.ValidationError as e:
                typed_error = e
            except msgspec.DecodeError:
                pass  # parse_json_body says what is wrong
            except RecursionError:
                raise _too_deep() from None
        try:
            value = parse_json_body(body)
        except HTTPError as e:
            if e.status == 422 and typed_error is not None:
                raise _out_of_range(typed_error) from None
            raise
        return self(value)

    def __call__(self, body: Any) -> dict[str, Any]:
        """The Python values for the given fields (defaults are the notebook's), or a 422."""
        if not isinstance(body, dict):
            raise HTTPError(
                422,
                "validation_error",
                f"the body must be a JSON object of parameters, not {_json_type(body)}",
                detail=[_item(["body"], "", "invalid", f"expected object, got {_json_type(body)}", "object", body)],
                error_count=1,
            )
        try:
            valid = self._validator.is_valid(body)
        except RecursionError:
            raise _too_deep() from None
        if not valid:  # explaining the errors is the slow path, only taken for a 422
            raise self._explain_all(body)
        return {name: self._coerce(name, value) for name, value in body.items()}

    def _explain_all(self, body: dict[str, Any]) -> HTTPError:
        detail: list[dict[str, Any]] = []
        count = 0
        try:
            for e in self._validator.iter_errors(body):
                items = self._explain(e, body)
                count += len(items)
                detail.extend(items[: MAX_DETAIL - len(detail)])
                if count >= MAX_DETAIL + _COUNT_CAP:
                    break
        except RecursionError:
            raise _too_deep() from None
        fields = ", ".join(dict.fromkeys(d["field"] for d in detail))
        more = f" ({count}{'+' if count >= MAX_DETAIL + _COUNT_CAP else ''} errors; the first {len(detail)} listed)"
        return HTTPError(
            422,
            "validation_error",
            f"invalid parameters: {fields}" + (more if count > len(detail) else ""),
            detail=detail,
            error_count=count,
            error_count_exact=count < MAX_DETAIL + _COUNT_CAP,
        )

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


def _json_schema_validator(schema: dict[str, Any]) -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema)


def _struct(name: str, decls: Any, optional: bool, forbid_unknown: bool = True) -> Any:
    """A msgspec Struct type for declarations (parameters or outputs); NotImplementedError where one has no form."""
    fields: list[Any] = [
        (d.name, _msgspec_type(d.type))
        if not optional or d.required
        else (d.name, _msgspec_type(d.type), msgspec.UNSET)
        for d in decls
    ]
    return msgspec.defstruct(name, fields, kw_only=True, forbid_unknown_fields=forbid_unknown)


def _typed_decoder(spec: ServiceSpec) -> msgspec.json.Decoder[Any] | None:
    """A msgspec decoder for the spec's parameters, or None where a type has no exact msgspec form."""
    try:
        return msgspec.json.Decoder(_struct("Parameters", spec.parameters, optional=True))
    except (TypeError, ValueError, NotImplementedError):
        return None


def _msgspec_type(t: Type) -> Any:
    match t:
        case Scalar(name):
            return {"int": int, "float": float, "bool": bool, "str": str}[name]
        case ListOf(item):
            return list[_msgspec_type(item)]  # type: ignore[misc]  # built at run time from the spec
        case DictOf(value):
            return dict[str, _msgspec_type(value)]  # type: ignore[misc]
        case OptionalType(inner):
            return typing.Optional[_msgspec_type(inner)]  # noqa: UP045  # built at run time
        case LiteralType(values) if not any(isinstance(v, bool) for v in values):
            return typing.Literal[values]
        case AnyValue():
            return Any
        case FilePath():  # a string (a URL) as JSON Schema checks it: "format" is a note, not a check
            return str
    raise NotImplementedError(t)


def _small(value: Any, budget: int = _ECHO) -> bool:
    """Whether ``value``'s JSON is at most ``budget`` bytes, without writing out a large one."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            budget -= 2 + 4 * len(v)
            stack.extend(v.values())
            budget -= sum(len(k) for k in v)
        elif isinstance(v, list):
            budget -= 2 + len(v)
            stack.extend(v)
        elif isinstance(v, str):
            budget -= len(v) + 2
        else:
            budget -= 8
        if budget < 0:
            return False
    return True


def _item(loc: list[Any], field: str, kind: str, msg: str, expected: Any, value: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"loc": loc, "field": field, "type": kind, "msg": msg}
    if expected is not None:
        out["expected"] = expected
    if kind != "missing" and _small(value):  # a long bad value is not echoed: the 422 stays small
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
        got = e.instance
        if got is None or isinstance(got, bool):
            return f"expected {expected}, got {json.dumps(got)}"
        shown = json.dumps(got)[:80] if _small(got) else f"of {len(got)} items" if isinstance(got, list | dict) else ""
        return f"expected {expected}, got {_json_type(got)} {shown}".rstrip()
    return str(e.message)[:200]


class OutputChecker:
    """Checks a notebook's outputs against the types its outputs cell declares."""

    def __init__(self, spec: ServiceSpec) -> None:
        self._names = [o.name for o in spec.outputs]
        self._schema = spec.output_schema()
        self._jsonschema: Draft202012Validator | None = None
        try:  # training notebooks may record more outputs (scrapbook's glue) than the cell declares
            self._struct: Any = _struct("Outputs", spec.outputs, optional=False, forbid_unknown=spec.kind == "serving")
        except (TypeError, ValueError, NotImplementedError):
            self._struct = None

    def problems(self, outputs: Mapping[str, Any]) -> str | None:
        """None when the outputs are as declared, else what is wrong with them, for the error body."""
        missing = [f"output {n!r} was not assigned" for n in self._names if n not in outputs]
        if missing:
            return "; ".join(missing)
        if self._struct is not None:
            try:
                msgspec.convert(outputs, self._struct)
                return None
            except msgspec.ValidationError:
                pass  # JSON Schema decides, and says what is wrong
        if self._jsonschema is None:
            self._jsonschema = _json_schema_validator(self._schema)
        if self._jsonschema.is_valid(outputs):
            return None
        bad = [
            f"output {'/'.join(map(str, e.absolute_path))!r}: {e.message}"
            for e in self._jsonschema.iter_errors(outputs)
        ]
        return "; ".join(bad) + " (the outputs cell's annotation disagrees)"
