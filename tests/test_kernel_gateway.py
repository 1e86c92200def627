"""The Kernel Gateway backend with a real Kernel Gateway, started as the image starts it, without a container."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from nb2svc import inspect_notebook, openapi_document
from nb2svc.backends.kernel_gateway import gateway_command, gateway_notebook

from .conftest import NOTEBOOKS, Service, conforms, reads_the_body_as_json_whatever_its_content_type

pytestmark = pytest.mark.slow


def gateway(tmp: Path, notebook: Path, env: dict[str, str] | None = None, kernels: int = 2) -> Service:
    spec = inspect_notebook(notebook)
    seed = tmp / "service.ipynb"
    nbformat.write(gateway_notebook(spec, str(notebook)), seed)
    svc = Service(notebook, env)
    cmd = gateway_command(str(seed), svc.port, kernels=kernels, ip="127.0.0.1")
    cmd[0] = sys.executable
    svc.command = cmd
    return svc


@pytest.fixture(scope="module")
def kg(tmp_path_factory: pytest.TempPathFactory) -> Any:
    svc = gateway(tmp_path_factory.mktemp("kg"), NOTEBOOKS / "all_types.ipynb", {"NB2SVC_MAX_BODY": "5000"})
    svc.start()
    yield svc
    svc.stop()


def test_the_gateway_answers_the_contract(kg: Service) -> None:
    openapi = kg.http.get("/openapi.json").json()
    assert openapi == json.loads(json.dumps(openapi_document(inspect_notebook(NOTEBOOKS / "all_types.ipynb"))))
    ok = kg.post("/invoke", {"features": [1, 2], "epochs": 2, "tag": '"; import os #'})
    assert ok.status_code == 200, ok.text
    assert ok.json()["total"] == 6.0 and ok.json()["echo"]["tag"] == '"; import os #'
    conforms(openapi, "/invoke", "post", ok)
    bad = kg.post("/invoke", {"features": "x", "nope": 1})
    assert bad.status_code == 422
    assert {d["field"] for d in bad.json()["detail"]} == {"features", "nope"}
    conforms(openapi, "/invoke", "post", bad)
    assert kg.http.get("/health").json()["status"] == "ok"
    assert "nb2svc_requests_total" in kg.http.get("/metrics").text


def test_setup_runs_once_per_kernel_and_requests_stay_apart(kg: Service) -> None:
    answers = [kg.post("/invoke", {"features": [float(i)], "tag": f"t{i}"}).json() for i in range(8)]
    assert {a["setup_count"] for a in answers} == {1}
    assert [a["echo"]["tag"] for a in answers] == [f"t{i}" for i in range(8)]


def test_a_raising_cell_is_a_json_500(tmp_path: Path) -> None:
    svc = gateway(tmp_path, NOTEBOOKS / "raises.ipynb")
    svc.start()
    try:
        r = svc.post("/invoke", {"x": -2})
        assert r.status_code == 500 and r.json()["cell"] == 3 and r.json()["ename"] == "ValueError"
        assert svc.post("/invoke", {"x": 4}).json() == {"y": 2.0}
    finally:
        svc.stop()


def test_a_training_notebook_behind_the_gateway(tmp_path: Path) -> None:
    """One kernel serves the runs API; each run still gets papermill and a kernel of its own."""
    svc = gateway(tmp_path, NOTEBOOKS / "training.ipynb", {"NB2SVC_RUNS_DIR": str(tmp_path / "runs")}, kernels=1)
    svc.start()
    try:
        run = svc.post("/runs?wait=60", {"steps": 4}).json()
        assert run["status"] == "succeeded" and run["outputs"]["loss"] == 0.25
        assert svc.http.get(f"/runs/{run['id']}").json()["id"] == run["id"]
        assert svc.http.get(f"/runs/{run['id']}/artifacts/model.json").json() == {"steps": 4, "message": "hello"}
        queued = svc.post("/runs", {"sleep": 5})
        assert queued.status_code == 202 and queued.headers["location"] == f"/runs/{queued.json()['id']}"
        assert svc.http.delete(f"/runs/{queued.json()['id']}").json()["status"] == "cancelled"
    finally:
        svc.stop()


def test_the_body_is_json_whatever_its_content_type(kg: Service) -> None:
    reads_the_body_as_json_whatever_its_content_type(kg)
