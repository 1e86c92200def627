"""The OpenAPI 3.1 document of a service, from its spec: every status each operation can answer."""

from __future__ import annotations

from typing import Any

from . import __version__
from .spec import ServiceSpec
from .types import JSON

_REF = "#/components/schemas/"
RUN_STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]
MAX_WAIT_S = 24 * 3600  # POST /runs?wait= at most a day
PAGE = 50  # GET /runs: runs a page by default
MAX_PAGE = 1000
CURSOR_PATTERN = r"^[0-9TZ:.-]+_[0-9a-f]+$"  # {created_at}_{id}: any such string is a position in the list

ERROR_SCHEMA: dict[str, JSON] = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "machine-readable code, e.g. validation_error"},
        "message": {"type": "string"},
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "field", "type", "msg"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "field": {"type": "string"},
                    "type": {"type": "string", "enum": ["missing", "extra_forbidden", "invalid"]},
                    "msg": {"type": "string"},
                    "expected": {},
                    "input": {},
                },
            },
        },
        "cell": {"type": "integer", "description": "1-based position of the cell that raised"},
        "ename": {"type": "string"},
        "evalue": {"type": "string"},
        "traceback": {"type": "array", "items": {"type": "string"}},
        "cause": {"type": "object", "description": "for a 503 after a failed setup: the setup's own error"},
        "error_count": {
            "type": "integer",
            "description": "a 422: how many errors were found; `detail` lists the first 20",
        },
        "error_count_exact": {
            "type": "boolean",
            "description": "false when counting stopped (past 1,000 errors): error_count is then a lower bound",
        },
    },
}

HEALTH_SCHEMA: dict[str, JSON] = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "starting", "failed"]},
        "kind": {"type": "string", "enum": ["serving", "training"]},
        "notebook": {"type": "string"},
        "error": {
            "type": ["object", "null"],
            "description": "the latest failed setup, while one keeps failing (retried after retry_in_s)",
        },
        "workers": {
            "type": "object",
            "description": "serving: worker processes wanted, set up and ready, and setups failed so far",
            "properties": {
                "desired": {"type": "integer"},
                "ready": {"type": "integer"},
                "setup_failures": {"type": "integer"},
            },
        },
    },
}

INSTANCE_HEADER: dict[str, JSON] = {
    "description": "the instance that answered: NB2SVC_INSTANCE, else its host name (a container's id)",
    "schema": {"type": "string"},
}


PREDICTION_HEADER: dict[str, JSON] = {
    "description": "names this prediction in the prediction log: send it back with POST /feedback",
    "schema": {"type": "string", "format": "uuid"},
}


def feedback_schema(spec: ServiceSpec) -> dict[str, JSON]:
    """A ``POST /feedback`` body: the answer's X-Prediction-Id and the truth of some or all outputs."""
    return {
        "type": "object",
        "required": ["prediction_id", "truth"],
        "additionalProperties": False,
        "properties": {
            "prediction_id": {"type": "string", "minLength": 1, "description": "the answer's X-Prediction-Id"},
            "truth": {
                "type": "object",
                "description": "the true value of some or all outputs (each optional, typed as the outputs)",
                "properties": spec.output_schema()["properties"],
                "additionalProperties": False,
            },
        },
    }


def _error(desc: str) -> dict[str, JSON]:
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": _REF + "Error"}}}}


def _json(desc: str, schema: str) -> dict[str, JSON]:
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": _REF + schema}}}}


def _run_schema() -> dict[str, JSON]:
    return {
        "type": "object",
        "required": ["id", "status", "links"],
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": RUN_STATUSES},
            "parameters": {"$ref": _REF + "Parameters"},
            "outputs": {"anyOf": [{"$ref": _REF + "Outputs"}, {"type": "null"}]},
            "error": {"anyOf": [{"$ref": _REF + "Error"}, {"type": "null"}]},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "duration_s": {"type": ["number", "null"]},
            "artifacts": {"type": "array", "items": {"type": "string"}},
            "instance": {
                "type": ["string", "null"],
                "description": "the instance that executed it (NB2SVC_INSTANCE, else its host name); null until it ran",
            },
            "links": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }


def _body(required: bool) -> dict[str, JSON]:
    return {
        "required": required,
        "content": {"application/json": {"schema": {"$ref": _REF + "Parameters"}}},
    }


def _common_errors(*codes: int) -> dict[str, JSON]:
    texts = {
        400: "the body is not valid JSON",
        404: "no such run or file",
        409: "the run has already finished",
        413: "the body is larger than the service accepts",
        422: "the parameters are invalid: each bad field is named",
        500: "the notebook raised: the cell, the exception's name and message",
        503: "the service is starting, its setup failed, the queue is full, or the shared run store "
        "(NB2SVC_QUEUE_URL) cannot be reached: `cause` says which",
        504: "the notebook did not finish within the timeout",
    }
    return {str(c): _error(texts[c]) for c in codes}


def _serving_paths(spec: ServiceSpec) -> dict[str, JSON]:
    return {
        "/invoke": {
            "post": {
                "operationId": "invoke",
                "summary": f"Run {spec.name} on one set of parameters",
                "requestBody": _body(required=any(p.required for p in spec.parameters)),
                "responses": {
                    "200": {
                        **_json("the notebook's outputs", "Outputs"),
                        "headers": {"X-Prediction-Id": {"$ref": "#/components/headers/PredictionId"}},
                    },
                    **_common_errors(400, 413, 422, 500, 503, 504),
                },
            }
        },
        "/feedback": {
            "post": {
                "operationId": "feedback",
                "summary": "Record the ground truth of a logged prediction (for nb2svc monitor)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": _REF + "Feedback"}}},
                },
                "responses": {
                    "204": {"description": "recorded (feedback sent again replaces it)"},
                    "400": _error("the body is not valid JSON"),
                    "404": _error("no logged prediction has this id (unknown, not sampled, or the log is off)"),
                    "413": _error("the body is larger than the service accepts"),
                    "422": _error("the feedback is invalid: an unknown output or a value of the wrong type"),
                    "503": _error("the prediction log cannot be reached; retry"),
                },
            }
        },
    }


def _training_paths(spec: ServiceSpec) -> dict[str, JSON]:
    run_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    run = _json("the run", "Run")
    not_started = _error(
        "the run has not started (queued, or cancelled before it started): no notebook yet; or, with object "
        "storage (NB2SVC_STORAGE_URL), it is running on another instance and its notebook is stored when it ends"
    )
    return {
        "/runs": {
            "post": {
                "operationId": "start_run",
                "summary": f"Start a run of {spec.name}",
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "description": "seconds to wait for the run to finish before answering (at most a day)",
                        "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
                    }
                ],
                "requestBody": _body(required=any(p.required for p in spec.parameters)),
                "responses": {
                    "200": _json("the run finished within `wait`", "Run"),
                    "202": _json("the run is queued or running", "Run"),
                    **_common_errors(400, 413, 422, 503),
                },
            },
            "get": {
                "operationId": "list_runs",
                "summary": "Runs, newest first, a page at a time",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "runs in the page",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": PAGE},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "where the page starts: opaque, from the previous page's `Link` header",
                        "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "a page of runs, newest first",
                        "headers": {
                            "Link": {
                                "description": 'the next page, `</runs?limit=...&cursor=...>; rel="next"`; '
                                "absent on the last page",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": {"application/json": {"schema": {"$ref": _REF + "RunList"}}},
                    },
                    **_common_errors(422, 503),
                },
            },
        },
        "/runs/{id}": {
            "get": {
                "operationId": "get_run",
                "parameters": [run_id],
                "responses": {"200": run, **_common_errors(404, 503)},
            },
            "delete": {
                "operationId": "delete_run",
                "summary": "Cancel the run if it has not finished, then delete it and its files",
                "parameters": [run_id],
                "responses": {
                    "200": _json("the run as it ended; it is gone now", "Run"),
                    **_common_errors(404, 503),
                },
            },
        },
        "/runs/{id}/cancel": {
            "post": {
                "operationId": "cancel_run",
                "summary": "Cancel a queued or running run",
                "parameters": [run_id],
                "responses": {"200": _json("the run, cancelled", "Run"), **_common_errors(404, 409, 503)},
            }
        },
        "/runs/{id}/notebook": {
            "get": {
                "operationId": "get_run_notebook",
                "summary": "The executed notebook (as far as it has run); it re-runs anywhere",
                "parameters": [run_id],
                "responses": {
                    "200": {
                        "description": "the notebook",
                        "content": {"application/x-ipynb+json": {"schema": {"type": "object"}}},
                    },
                    **_common_errors(404, 503),
                    "409": not_started,
                },
            }
        },
        "/runs/{id}/artifacts/{path}": {
            "get": {
                "operationId": "get_run_artifact",
                "parameters": [
                    run_id,
                    {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **_common_errors(404, 503),
                },
            }
        },
    }


def openapi_document(spec: ServiceSpec) -> dict[str, Any]:
    """OpenAPI 3.1 for the spec's service; `/openapi.json` answers exactly this."""
    paths = _serving_paths(spec) if spec.kind == "serving" else _training_paths(spec)
    paths["/health"] = {
        "get": {
            "operationId": "health",
            "responses": {
                "200": _json("setup is done", "Health"),
                "503": _json("setup is running or failed; training: or its run store cannot be reached", "Health"),
            },
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "responses": {"200": {"description": "this document", "content": {"application/json": {}}}},
        }
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "responses": {
                "200": {"description": "Prometheus metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
            },
        }
    }
    schemas: dict[str, JSON] = {
        "Parameters": spec.input_schema(),
        "Outputs": spec.output_schema(),
        "Error": ERROR_SCHEMA,
        "Health": HEALTH_SCHEMA,
    }
    if spec.kind == "serving":
        schemas["Feedback"] = feedback_schema(spec)
    if spec.kind == "training":
        schemas["Run"] = _run_schema()
        schemas["RunList"] = {"type": "array", "items": {"$ref": _REF + "Run"}}
    for operations in paths.values():
        for operation in operations.values():
            for response in operation["responses"].values():
                response.setdefault("headers", {})["X-Nb2svc-Instance"] = {"$ref": "#/components/headers/Instance"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": spec.name,
            "version": spec.sha256[:12],
            "description": f"{spec.kind} function compiled from {spec.notebook.name} by nb2svc {__version__}",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {"schemas": schemas, "headers": {"Instance": INSTANCE_HEADER, "PredictionId": PREDICTION_HEADER}},
    }
