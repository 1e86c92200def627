"""The OpenFaaS backend's handler and server, without a container: the same contract as `nb2svc serve`."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from nb2svc import inspect_notebook, openapi_document
from nb2svc.backends.openfaas import Context, Event, handle

from .conftest import NOTEBOOKS, Service, conforms, reads_the_body_as_json_whatever_its_content_type

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faas() -> Any:
    svc = Service(
        NOTEBOOKS / "all_types.ipynb",
        {"NB2SVC_NOTEBOOK": str(NOTEBOOKS / "all_types.ipynb"), "NB2SVC_MAX_BODY": "5000"},
        command=[sys.executable, "-m", "nb2svc.backends.openfaas"],
        health="/_/health",
    )
    svc.start()
    yield svc
    svc.stop()


def test_the_watchdog_health_route_and_the_contracts_own(faas: Service) -> None:
    assert faas.http.get("/_/health").json()["status"] == "ok"
    assert faas.http.get("/health").status_code == 200


def test_answers_as_nb2svc_serve_does(faas: Service) -> None:
    openapi = faas.http.get("/openapi.json").json()
    assert openapi == json.loads(json.dumps(openapi_document(inspect_notebook(NOTEBOOKS / "all_types.ipynb"))))
    ok = faas.post("/invoke", {"features": [1, 2], "epochs": 2})
    assert ok.status_code == 200 and ok.json()["total"] == 6.0
    conforms(openapi, "/invoke", "post", ok)
    bad = faas.post("/invoke", {"features": "x", "nope": 1})
    assert bad.status_code == 422
    assert {d["field"] for d in bad.json()["detail"]} == {"features", "nope"}
    conforms(openapi, "/invoke", "post", bad)
    big = faas.http.post("/invoke", content=b" " * 6000)
    assert (big.status_code, big.json()["error"]) == (413, "body_too_large")
    assert faas.http.post("/invoke", content=b"{").status_code == 400
    assert "nb2svc_requests_total" in faas.http.get("/metrics").text


def test_handle_is_the_python3_http_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NB2SVC_NOTEBOOK", str(NOTEBOOKS / "raises.ipynb"))
    health = Event(body=b"", headers={}, method="GET", query={}, path="/_/health")
    for _ in range(200):
        res = handle(health, Context())
        if res["statusCode"] == 200:
            break
        time.sleep(0.05)
    res = handle(Event(b'{"x": -1}', {"Content-Type": "application/json"}, "POST", {}, "/invoke"), Context())
    assert res["statusCode"] == 500 and res["headers"]["Content-Type"] == "application/json"
    assert isinstance(res["body"], str)  # the template's index.py sends str bodies as they are
    assert json.loads(res["body"])["cell"] == 3
    ok = handle(Event(b'{"x": 9}', {}, "POST", {}, "/invoke"), Context())
    assert (ok["statusCode"], json.loads(ok["body"])) == (200, {"y": 3.0})


def test_the_body_is_json_whatever_its_content_type(faas: Service) -> None:
    reads_the_body_as_json_whatever_its_content_type(faas)
