"""The closed set of parameter and output types, read from annotations or default values.

Each type knows its JSON Schema, how it reads in Python, and how to turn a validated JSON
value into the Python value the notebook expects (``1`` for a ``float`` becomes ``1.0``).
Anything outside the set is a :class:`TypeNotSupported`, which callers turn into a compile
error naming the line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, ClassVar

JSON = Any  # a value that json.dumps accepts

_SCALARS: dict[str, str] = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}


class TypeNotSupported(ValueError):
    """An annotation or value outside nb2svc's closed set of types."""


@dataclass(frozen=True)
class Type:
    """Base of the type tree; subclasses are frozen and comparable."""

    kind: ClassVar[str] = ""

    def schema(self) -> dict[str, JSON]:
        raise NotImplementedError

    def python(self) -> str:
        """How the type reads in a notebook annotation."""
        raise NotImplementedError

    def coerce(self, value: JSON) -> Any:
        """Turn a schema-valid JSON value into the Python value the notebook expects."""
        return value

    def to_json(self) -> JSON:
        """A JSON form that :func:`type_from_json` reads back (used in rendered specs)."""
        return self.python()


@dataclass(frozen=True)
class Scalar(Type):
    name: str  # int, float, bool or str

    def schema(self) -> dict[str, JSON]:
        return {"type": _SCALARS[self.name]}

    def python(self) -> str:
        return self.name

    def coerce(self, value: JSON) -> Any:
        if self.name == "float" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if self.name == "int" and isinstance(value, float):
            return int(value)  # JSON Schema's integer admits 2.0
        return value


@dataclass(frozen=True)
class AnyValue(Type):
    """Any JSON value: the items of a bare ``list`` or the values of a bare ``dict``."""

    def schema(self) -> dict[str, JSON]:
        return {}

    def python(self) -> str:
        return "Any"


@dataclass(frozen=True)
class ListOf(Type):
    item: Type

    def schema(self) -> dict[str, JSON]:
        s: dict[str, JSON] = {"type": "array"}
        if not isinstance(self.item, AnyValue):
            s["items"] = self.item.schema()
        return s

    def python(self) -> str:
        return f"list[{self.item.python()}]"

    def coerce(self, value: JSON) -> Any:
        return [self.item.coerce(v) for v in value]


@dataclass(frozen=True)
class DictOf(Type):
    value: Type

    def schema(self) -> dict[str, JSON]:
        s: dict[str, JSON] = {"type": "object"}
        if not isinstance(self.value, AnyValue):
            s["additionalProperties"] = self.value.schema()
        return s

    def python(self) -> str:
        return f"dict[str, {self.value.python()}]"

    def coerce(self, value: JSON) -> Any:
        return {k: self.value.coerce(v) for k, v in value.items()}


@dataclass(frozen=True)
class Optional(Type):
    inner: Type

    def schema(self) -> dict[str, JSON]:
        inner = self.inner.schema()
        if list(inner) == ["type"] and isinstance(inner["type"], str):
            return {"type": [inner["type"], "null"]}
        return {"anyOf": [inner, {"type": "null"}]}

    def python(self) -> str:
        return f"Optional[{self.inner.python()}]"

    def coerce(self, value: JSON) -> Any:
        return None if value is None else self.inner.coerce(value)


@dataclass(frozen=True)
class Literal(Type):
    values: tuple[str | int | bool, ...]

    def schema(self) -> dict[str, JSON]:
        return {"enum": list(self.values)}

    def python(self) -> str:
        return f"Literal[{', '.join(repr(v) for v in self.values)}]"


@dataclass(frozen=True)
class FilePath(Type):
    """``pathlib.Path``: a local path in Jupyter (the default); over HTTP a URL the runtime fetches and binds
    as the local file's path, a ``str`` (runtime/references.py)."""

    def schema(self) -> dict[str, JSON]:
        return {"type": "string", "format": "uri", "description": PATH_DESCRIPTION}

    def python(self) -> str:
        return "Path"


def is_path(t: Type) -> bool:
    """``Path`` or ``Optional[Path]``: a parameter the runtime fetches (runtime/references.py)."""
    return isinstance(t.inner if isinstance(t, Optional) else t, FilePath)


PATH_DESCRIPTION = (
    "a file, by reference: an https://, http:// or s3:// URL, fetched by the service before the notebook runs "
    "(file:// and local paths only where the service sets NB2SVC_ALLOW_FILE_URLS)"
)


def _name_of(node: ast.expr) -> str | None:
    """``int`` → "int", ``typing.List`` → "List", anything else → None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        if node.value.id in {"typing", "t", "builtins"} or (node.value.id, node.attr) == ("pathlib", "Path"):
            return node.attr
    return None


def _args(node: ast.expr) -> list[ast.expr]:
    return list(node.elts) if isinstance(node, ast.Tuple) else [node]


def _is_none(node: ast.expr) -> bool:
    return (isinstance(node, ast.Constant) and node.value is None) or _name_of(node) == "NoneType"


def parse_annotation(node: ast.expr) -> Type:
    """Read an annotation's AST into a :class:`Type`, or raise :class:`TypeNotSupported`."""
    t = _parse(node)
    inner = t.inner if isinstance(t, Optional) else t
    if not isinstance(inner, FilePath) and _holds_path(inner):
        raise TypeNotSupported(
            f"type {ast.unparse(node)!r}: Path is a parameter's own type (or Optional[Path]), not inside a list or dict"
        )
    return t


def _holds_path(t: Type) -> bool:
    match t:
        case FilePath():
            return True
        case ListOf(item):
            return _holds_path(item)
        case DictOf(value):
            return _holds_path(value)
        case Optional(inner):
            return _holds_path(inner)
    return False


def _parse(node: ast.expr) -> Type:
    text = ast.unparse(node)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:  # a string annotation: "list[int]"
            return parse_annotation(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            raise TypeNotSupported(f"type {node.value!r} is not a valid annotation") from None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([node.left, node.right], text)
    name = _name_of(node)
    if name in _SCALARS:
        return Scalar(name)
    if name in {"list", "List"}:
        return ListOf(AnyValue())
    if name in {"dict", "Dict"}:
        return DictOf(AnyValue())
    if name == "Any":
        return AnyValue()
    if name == "Path":
        return FilePath()
    if isinstance(node, ast.Subscript):
        base = _name_of(node.value)
        args = _args(node.slice)
        if base in {"list", "List"} and len(args) == 1:
            return ListOf(parse_annotation(args[0]))
        if base in {"dict", "Dict"} and len(args) == 2:
            if _name_of(args[0]) != "str":
                raise TypeNotSupported(f"type {text!r}: JSON object keys are strings; use dict[str, ...]")
            return DictOf(parse_annotation(args[1]))
        if base == "Optional" and len(args) == 1:
            return Optional(parse_annotation(args[0]))
        if base == "Union":
            return _union(args, text)
        if base == "Literal":
            return _literal(args, text)
    raise TypeNotSupported(
        f"type {text!r} is not supported",
    )


def _union(members: list[ast.expr], text: str) -> Type:
    flat: list[ast.expr] = []
    for m in members:  # a | b | None nests as BinOp(BinOp(a, b), None)
        if isinstance(m, ast.BinOp) and isinstance(m.op, ast.BitOr):
            flat.extend([m.left, m.right])
        else:
            flat.append(m)
    rest = [m for m in flat if not _is_none(m)]
    if len(rest) == 1 and len(flat) == 2:
        return Optional(parse_annotation(rest[0]))
    raise TypeNotSupported(f"type {text!r}: only unions with None (Optional[T]) are supported")


def _literal(args: list[ast.expr], text: str) -> Literal:
    values: list[str | int | bool] = []
    for a in args:
        if not (isinstance(a, ast.Constant) and isinstance(a.value, str | int | bool)):
            raise TypeNotSupported(f"type {text!r}: Literal values must be strings, integers or booleans")
        values.append(a.value)
    if not values:
        raise TypeNotSupported(f"type {text!r}: Literal needs at least one value")
    return Literal(tuple(values))


def infer_from_value(value: Any) -> Type:
    """The type of an unannotated parameter, from its literal default."""
    if isinstance(value, bool):
        return Scalar("bool")
    if isinstance(value, int):
        return Scalar("int")
    if isinstance(value, float):
        return Scalar("float")
    if isinstance(value, str):
        return Scalar("str")
    if isinstance(value, list | tuple):
        return ListOf(_common([infer_from_value(v) for v in value], "list"))
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeNotSupported("a dict default needs string keys")
        return DictOf(_common([infer_from_value(v) for v in value.values()], "dict"))
    if value is None:
        raise TypeNotSupported("a default of None says nothing of the type")
    raise TypeNotSupported(f"a default of type {type(value).__name__} is not supported")


def _common(types: list[Type], what: str) -> Type:
    if not types:
        raise TypeNotSupported(f"an empty {what} default says nothing of its items' type")
    unique = set(types)
    if unique == {Scalar("int"), Scalar("float")}:
        return Scalar("float")
    if len(unique) == 1:
        return types[0]
    raise TypeNotSupported(f"the {what} default mixes types ({', '.join(sorted(t.python() for t in unique))})")


def type_from_json(text: str) -> Type:
    """Read back :meth:`Type.to_json`."""
    return parse_annotation(ast.parse(text, mode="eval").body)


def check_value(t: Type, value: Any) -> bool:
    """Whether a Python value fits ``t``: used on defaults, so a typo'd default fails early."""
    match t:
        case Scalar("bool"):
            return isinstance(value, bool)
        case Scalar("int"):
            return isinstance(value, int) and not isinstance(value, bool)
        case Scalar("float"):
            return isinstance(value, int | float) and not isinstance(value, bool)
        case Scalar("str") | FilePath():
            return isinstance(value, str)  # a Path's default is a str, as Jupyter binds it
        case ListOf(item):
            return isinstance(value, list | tuple) and all(check_value(item, v) for v in value)
        case DictOf(v):
            return isinstance(value, dict) and all(isinstance(k, str) and check_value(v, x) for k, x in value.items())
        case Optional(inner):
            return value is None or check_value(inner, value)
        case Literal(values):
            return any(value == v and type(value) is type(v) for v in values)
    return True  # AnyValue
