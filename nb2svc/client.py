"""Calling a running service, typed from its own OpenAPI document: the library behind `nb2svc call`."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any

import httpx

from .errors import CallError, ExternalError

_TRUE = {"true", "1", "yes", "on"}
# The notebook (the user's own input) raised or broke its declared outputs: exit 1, not 3.
_NOTEBOOK_FAULTS = {"notebook_error", "output_error"}
_FALSE = {"false", "0", "no", "off"}


def _not_json(token: str) -> Any:
    raise json.JSONDecodeError(f"{token} is not JSON", token, 0)


def convert(name: str, raw: str, schema: Mapping[str, Any]) -> Any:
    """A command-line string as the JSON value the parameter's schema asks for."""
    if "enum" in schema:
        for v in schema["enum"]:
            text = str(v).lower() if isinstance(v, bool) else str(v)  # JSON's true/false, Python's True
            if text == (raw.lower() if isinstance(v, bool) else raw):
                return v
        raise CallError(f"parameter {name!r}: {raw!r} is not one of {', '.join(map(str, schema['enum']))}")
    types = schema.get("type")
    if isinstance(types, list):  # {"type": ["integer", "null"]}: one variant a type
        variants: list[Mapping[str, Any]] = [{**schema, "type": t} for t in types]
    else:
        variants = list(schema.get("anyOf", [])) or [schema]
    if len(variants) > 1:
        if raw.lower() in {"null", "none"} and any(v.get("type") == "null" for v in variants):
            return None
        variants = [v for v in variants if v.get("type") != "null"]
        errors = []
        for v in variants:
            try:
                return convert(name, raw, v)
            except CallError as e:
                errors.append(str(e))
        raise CallError(errors[0])
    t = schema.get("type")
    try:
        if t == "integer":
            return int(raw)
        if t == "number":
            number = float(raw)
            if not math.isfinite(number):
                raise CallError(f"parameter {name!r}: {raw!r} is not a finite number (JSON has no NaN or Infinity)")
            return number
    except ValueError:
        raise CallError(
            f"parameter {name!r}: {raw!r} is not {'an integer' if t == 'integer' else 'a number'}"
        ) from None
    if t == "boolean":
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise CallError(f"parameter {name!r}: {raw!r} is not a boolean (use true or false)")
    if t == "string":
        return raw
    try:
        return json.loads(raw, parse_constant=_not_json)
    except json.JSONDecodeError:
        items = schema.get("items", {})
        if t == "array" and items.get("type") in {"integer", "number", "string", "boolean"}:
            return [convert(name, part.strip(), items) for part in raw.split(",") if part.strip()]
        raise CallError(f"parameter {name!r}: {raw!r} is not JSON (write e.g. '[1, 2]' or '{{\"a\": 1}}')") from None


class Client:
    def __init__(self, url: str, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)
        self.timeout = timeout

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ExternalError(f"cannot reach {self.url}{path}: {e}", "is the service running?") from None

    def openapi(self) -> dict[str, Any]:
        r = self._request("GET", "/openapi.json")
        if r.status_code != 200:
            raise ExternalError(f"{self.url}/openapi.json answered {r.status_code}", "is this an nb2svc service?")
        doc: dict[str, Any] = r.json()
        return doc

    def call(self, raw: Mapping[str, str], body: Mapping[str, Any] | None = None, wait: bool = True) -> Any:
        """Convert, call, and (training, unless ``wait`` is false) wait for the run to finish."""
        doc = self.openapi()
        schema = doc["components"]["schemas"]["Parameters"]
        props = schema.get("properties", {})
        values = dict(body or {})
        for name, text in raw.items():
            if name not in props:
                raise CallError(f"unknown parameter {name!r}", f"known: {', '.join(props) or 'none'}")
            values[name] = convert(name, text, props[name])
        if "/invoke" in doc["paths"]:
            return self._answer(self._request("POST", "/invoke", json=values))
        run = self._answer(self._request("POST", "/runs", json=values, params={"wait": 1} if wait else None))
        deadline = time.monotonic() + self.timeout
        while wait and run["status"] in {"queued", "running"}:
            if time.monotonic() > deadline:
                raise ExternalError(f"run {run['id']} has not finished after {self.timeout:g} s", "see GET /runs/{id}")
            time.sleep(0.5)
            run = self._answer(self._request("GET", f"/runs/{run['id']}"))
        if wait and run["status"] != "succeeded":
            err = run.get("error") or {}
            error = CallError if err.get("error") in _NOTEBOOK_FAULTS else ExternalError
            raise error(f"run {run['id']} {run['status']}: {err.get('message', '')}".rstrip(": "))
        return run

    def _answer(self, r: httpx.Response) -> Any:
        try:
            body = r.json()
        except ValueError:
            raise ExternalError(f"{r.request.url} answered {r.status_code} with no JSON") from None
        if r.status_code < 400:
            return body
        message = body.get("message", r.text) if isinstance(body, dict) else r.text
        if r.status_code == 422 and isinstance(body, dict) and body.get("detail"):
            message = "; ".join(f"{d['field'] or 'body'}: {d['msg']}" for d in body["detail"])
        if r.status_code < 500:
            raise CallError(f"the service refused the call ({r.status_code}): {message}")
        if isinstance(body, dict) and body.get("error") in _NOTEBOOK_FAULTS:
            raise CallError(f"the notebook failed ({r.status_code}): {message}")
        raise ExternalError(f"the service failed ({r.status_code}): {message}")
