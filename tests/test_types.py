"""The closed set of types: annotations and defaults in, JSON Schema and Python values out."""

from __future__ import annotations

import ast

import pytest

from nb2svc.types import (
    DictOf,
    ListOf,
    Literal,
    Optional,
    Scalar,
    TypeNotSupported,
    check_value,
    infer_from_value,
    parse_annotation,
    type_from_json,
)


def ann(text: str):  # type: ignore[no-untyped-def]
    return parse_annotation(ast.parse(text, mode="eval").body)


@pytest.mark.parametrize(
    ("text", "schema"),
    [
        ("int", {"type": "integer"}),
        ("float", {"type": "number"}),
        ("bool", {"type": "boolean"}),
        ("str", {"type": "string"}),
        ("list[int]", {"type": "array", "items": {"type": "integer"}}),
        ("List[float]", {"type": "array", "items": {"type": "number"}}),
        ("typing.List[str]", {"type": "array", "items": {"type": "string"}}),
        ("dict[str, float]", {"type": "object", "additionalProperties": {"type": "number"}}),
        ("Optional[str]", {"type": ["string", "null"]}),
        ("int | None", {"type": ["integer", "null"]}),
        ("None | int", {"type": ["integer", "null"]}),
        ("Union[int, None]", {"type": ["integer", "null"]}),
        ("Literal['adam', 'sgd']", {"enum": ["adam", "sgd"]}),
        ("typing.Literal[1, 2]", {"enum": [1, 2]}),
        ("Optional[list[int]]", {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "null"}]}),
        ("list[list[float]]", {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}),
        ("'list[int]'", {"type": "array", "items": {"type": "integer"}}),
        ("list", {"type": "array"}),
        ("dict", {"type": "object"}),
    ],
)
def test_annotations_map_to_json_schema(text: str, schema: dict[str, object]) -> None:
    t = ann(text)
    assert t.schema() == schema
    assert type_from_json(t.to_json()) == t  # the rendered spec reads back to the same type


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Decimal", "not supported"),
        ("dict[int, str]", "keys are strings"),
        ("int | str", "only unions with None"),
        ("Union[int, str, None]", "only unions with None"),
        ("Literal[1.5]", "Literal values"),
        ("np.ndarray", "not supported"),
        ("tuple[int, int]", "not supported"),
    ],
)
def test_unsupported_annotations_say_why(text: str, reason: str) -> None:
    with pytest.raises(TypeNotSupported, match=reason):
        ann(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, Scalar("int")),
        (1e-3, Scalar("float")),
        (True, Scalar("bool")),
        ("x", Scalar("str")),
        ([64, 32], ListOf(Scalar("int"))),
        ([1, 2.5], ListOf(Scalar("float"))),
        ({"a": 1.0}, DictOf(Scalar("float"))),
    ],
)
def test_types_inferred_from_defaults(value: object, expected: object) -> None:
    assert infer_from_value(value) == expected


@pytest.mark.parametrize("value", [None, [], {}, [1, "a"], {1: 2}, b"x"])
def test_defaults_that_say_nothing_of_the_type_are_refused(value: object) -> None:
    with pytest.raises(TypeNotSupported):
        infer_from_value(value)


def test_coerce_turns_json_numbers_into_the_declared_python_type() -> None:
    assert ListOf(Scalar("float")).coerce([1, 2]) == [1.0, 2.0]
    assert isinstance(ListOf(Scalar("float")).coerce([1])[0], float)
    assert isinstance(Scalar("int").coerce(2.0), int)
    assert Optional(Scalar("float")).coerce(None) is None
    assert DictOf(Scalar("float")).coerce({"a": 1}) == {"a": 1.0}


def test_check_value_distinguishes_bool_from_int() -> None:
    assert check_value(Scalar("int"), 1)
    assert not check_value(Scalar("int"), True)
    assert not check_value(Literal((1,)), True)
    assert check_value(Optional(ListOf(Scalar("int"))), None)
    assert not check_value(ListOf(Scalar("int")), [1, "2"])
