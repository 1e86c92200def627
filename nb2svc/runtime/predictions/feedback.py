"""``POST /feedback`` bodies, ``{"prediction_id": "...", "truth": {OUTPUT: value, ...}}``, typed from the outputs."""

from __future__ import annotations

import typing
from typing import Any

if typing.TYPE_CHECKING:
    from jsonschema import Draft202012Validator

from ...openapi import feedback_schema
from ...spec import ServiceSpec
from ..errors import HTTPError
from ..validation import _describe, _item, _json_schema_validator, _message, parse_json_body


def service_meta(spec: ServiceSpec, image: str) -> dict[str, Any]:
    """What the log keeps of the service (key ``service:NAME``): its typed parameters and outputs, for monitor."""
    return {
        "name": spec.name,
        "notebook": spec.notebook.name,
        "sha256": spec.sha256,
        "image": image,
        "parameters": [{"name": p.name, "type": p.type.to_json()} for p in spec.parameters],
        "outputs": [{"name": o.name, "type": o.type.to_json()} for o in spec.outputs],
    }


class FeedbackReader:
    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self._schema = feedback_schema(spec)
        self._jsonschema: Draft202012Validator | None = None

    @property
    def _validator(self) -> Draft202012Validator:
        if self._jsonschema is None:  # on the first /feedback: importing jsonschema costs seconds at serve start
            self._jsonschema = _json_schema_validator(self._schema)
        return self._jsonschema

    def parse(self, body: bytes) -> tuple[str, dict[str, Any]]:
        """The prediction id and the typed truth, or a 400 or 422 naming each bad field."""
        value = parse_json_body(body)
        if not self._validator.is_valid(value):
            raise self._explain(value)
        truth = {}
        for name, v in value["truth"].items():
            decl = next(o for o in self.spec.outputs if o.name == name)
            truth[name] = decl.type.coerce(v)
        return value["prediction_id"], truth

    def _explain(self, body: Any) -> HTTPError:
        detail: list[dict[str, Any]] = []
        for e in self._validator.iter_errors(body):
            path = list(e.absolute_path)
            if e.validator == "required":
                detail += [
                    _item(["body", n], n, "missing", "field required", _describe(self._schema["properties"][n]))
                    for n in e.validator_value
                    if isinstance(body, dict) and n not in body
                ]
            elif e.validator == "additionalProperties" and isinstance(e.instance, dict):
                known = e.schema.get("properties", {})
                where = "output" if path == ["truth"] else "field"
                names = ", ".join(known) or "none"
                detail += [
                    _item(
                        ["body", *path, k],
                        ".".join(map(str, [*path, k])),
                        "extra_forbidden",
                        f"unknown {where} (known: {names})",
                        None,
                        e.instance[k],
                    )
                    for k in e.instance
                    if k not in known
                ]
            else:
                expected = _describe(e.schema)
                field = ".".join(map(str, path[:2]))
                detail.append(_item(["body", *path], field, "invalid", _message(e, expected), expected, e.instance))
            if len(detail) >= 20:
                break
        fields = ", ".join(dict.fromkeys(d["field"] or "body" for d in detail))
        return HTTPError(
            422, "validation_error", f"invalid feedback: {fields}", detail=detail[:20], error_count=len(detail)
        )
