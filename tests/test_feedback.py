"""The prediction log (SPEC section 8) behind real `nb2svc serve` processes: ids, rows, feedback, PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import random
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from nb2svc.runtime.predictions import open_log

from .conftest import Postgres, Service, conforms, free_port
from .feedback_notebook import write_scorer

pytestmark = pytest.mark.slow


def _metric(svc: Service, name: str) -> float:
    text = svc.http.get("/metrics").text
    found = re.findall(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(found[0]) if found else 0.0


def _wait_logged(svc: Service, n: int) -> None:
    deadline = time.monotonic() + 30
    while _metric(svc, "nb2svc_predictions_logged_total") < n:
        assert time.monotonic() < deadline, "the predictions were never written"
        time.sleep(0.1)


def _invoke_many(svc: Service, bodies: list[dict[str, Any]], clients: int = 8) -> list[httpx.Response]:
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda b: httpx.post(f"{svc.url}/invoke", json=b, timeout=60), bodies))


@pytest.fixture
def scorer(tmp_path: Path) -> Path:
    return write_scorer(tmp_path)


def test_600_predictions_are_logged_with_distinct_ids(serve: Any, scorer: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    svc = serve(scorer, {"NB2SVC_LOG_URL": url, "NB2SVC_IMAGE": "registry/scorer:1", "NB2SVC_INSTANCE": "one"})
    rng = random.Random(1)  # noqa: S311  # test data
    bodies = [{"x": rng.gauss(0, 1), "colour": rng.choice(["red", "green"]), "features": [i, 1]} for i in range(600)]
    answers = _invoke_many(svc, bodies)
    assert [r.status_code for r in answers] == [200] * 600
    ids = [r.headers["x-prediction-id"] for r in answers]
    assert len(set(ids)) == 600
    _wait_logged(svc, 600)
    db = open_log(url)
    rows = {r.id: r for r in db.read("scorer")}
    db.close()
    assert set(rows) == set(ids)
    for body, answer, pid in zip(bodies, answers, ids, strict=True):
        row = rows[pid]
        assert row.parameters == {**body, "features": [float(v) for v in body["features"]], "note": ""}  # defaults in
        assert row.outputs == answer.json()
        assert (row.instance, row.image, row.truth) == ("one", "registry/scorer:1", None)
        assert row.latency_s > 0
    assert _metric(svc, 'nb2svc_predictions_dropped_total{reason="full"}') == 0


def test_feedback_is_recorded_typed_and_refused_when_wrong(serve: Any, scorer: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    svc = serve(scorer, {"NB2SVC_LOG_URL": url})
    openapi = svc.http.get("/openapi.json").json()
    r = svc.post("/invoke", {"x": 2.0})
    conforms(openapi, "/invoke", "post", r)
    pid = r.headers["x-prediction-id"]
    # at once: the prediction is most likely still in the buffer; feedback waits for it
    ok = svc.post("/feedback", {"prediction_id": pid, "truth": {"label": "neg", "score": 1}})
    assert ok.status_code == 204, ok.text
    unknown = svc.post("/feedback", {"prediction_id": "0190a000-0000-7000-8000-000000000000", "truth": {}})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_prediction")
    conforms(openapi, "/feedback", "post", unknown)
    wrong = svc.post("/feedback", {"prediction_id": pid, "truth": {"score": "high", "colour": "red", "shade": "pink"}})
    assert wrong.status_code == 422, wrong.text
    conforms(openapi, "/feedback", "post", wrong)
    detail = {d["field"]: d["type"] for d in wrong.json()["detail"]}
    assert detail == {"truth.score": "invalid", "truth.colour": "extra_forbidden", "truth.shade": "invalid"}
    missing = svc.post("/feedback", {"truth": {"label": "pos"}})
    assert (missing.status_code, missing.json()["detail"][0]["field"]) == (422, "prediction_id")
    assert svc.http.post("/feedback", content=b"{nope").status_code == 400
    db = open_log(url)
    (row,) = db.read("scorer")
    db.close()
    assert row.truth == {"label": "neg", "score": 1.0}  # typed: the int became the float the output is
    again = svc.post("/feedback", {"prediction_id": pid, "truth": {"label": "pos"}})
    assert again.status_code == 204  # feedback sent again replaces it


def test_log_off_and_sampling(serve: Any, scorer: Path, tmp_path: Path) -> None:
    off = serve(scorer, {"NB2SVC_LOG_URL": "off"})
    r = off.post("/invoke", {"x": 1.0})
    assert r.status_code == 200 and r.headers["x-prediction-id"]
    fb = off.post("/feedback", {"prediction_id": r.headers["x-prediction-id"], "truth": {"label": "pos"}})
    assert fb.status_code == 404 and "off" in fb.json()["message"]
    url = f"sqlite:///{tmp_path / 'sampled.sqlite'}"
    sampled = serve(scorer, {"NB2SVC_LOG_URL": url, "NB2SVC_LOG_SAMPLE": "0.25"})
    answers = _invoke_many(sampled, [{"x": float(i)} for i in range(400)])
    assert all(a.status_code == 200 for a in answers)
    time.sleep(1.0)
    db = open_log(url)
    n = len(db.read("scorer"))
    db.close()
    assert 40 < n < 160, n  # 100 expected; far outside that the setting is not applied


def test_errors_are_not_predictions(serve: Any, scorer: Path, tmp_path: Path) -> None:
    svc = serve(scorer, {"NB2SVC_LOG_URL": f"sqlite:///{tmp_path / 'log.sqlite'}"})
    bad = svc.post("/invoke", {"x": "nope"})
    assert bad.status_code == 422 and "x-prediction-id" not in bad.headers


def test_two_replicas_share_one_postgresql_log(serve: Any, scorer: Path, postgres: Postgres) -> None:
    log = postgres.database("feedback_replicas")
    env = {"NB2SVC_LOG_URL": log}
    a = serve(scorer, {**env, "NB2SVC_INSTANCE": "replica-a"})
    b = serve(scorer, {**env, "NB2SVC_INSTANCE": "replica-b"})
    answers = [svc.post("/invoke", {"x": float(i), "colour": "blue"}) for i in range(50) for svc in (a, b)]
    ids = [r.headers["x-prediction-id"] for r in answers]
    # feedback through the other replica, at once: the prediction may still be in its maker's buffer
    first_a, first_b = ids[0], ids[1]
    assert b.post("/feedback", {"prediction_id": first_a, "truth": {"label": "pos"}}).status_code == 204
    assert a.post("/feedback", {"prediction_id": first_b, "truth": {"label": "neg"}}).status_code == 204
    _wait_logged(a, 50)
    _wait_logged(b, 50)
    db = open_log(log)
    rows = {r.id: r for r in db.read("scorer") if r.id in set(ids)}
    db.close()
    assert set(rows) == set(ids)
    assert {rows[i].instance for i in ids[0::2]} == {"replica-a"} and {rows[i].instance for i in ids[1::2]} == {
        "replica-b"
    }
    assert rows[first_a].truth == {"label": "pos"} and rows[first_b].truth == {"label": "neg"}


def test_serving_goes_on_while_postgresql_is_down(serve: Any, scorer: Path, tmp_path: Path) -> None:
    from .conftest import postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (scripts/services-setup installs Debian's postgresql)")
    import tempfile

    pg = Postgres(bindir, Path(tempfile.mkdtemp(prefix="nb2svc-pg-", dir="/tmp")) / "data", free_port())
    pg.init()
    pg.start()
    try:
        svc = serve(scorer, {"NB2SVC_LOG_URL": pg.url, "NB2SVC_LOG_BUFFER": "20"})
        assert svc.post("/invoke", {"x": 1.0}).status_code == 200
        _wait_logged(svc, 1)
        pg.stop()
        answers = [svc.post("/invoke", {"x": float(i)}) for i in range(60)]
        assert [r.status_code for r in answers] == [200] * 60
        # the buffer holds 20, the writer 20 more (its batch): the rest is dropped and counted
        assert _metric(svc, 'nb2svc_predictions_dropped_total{reason="full"}') >= 60 - 2 * 20
        fb = svc.post("/feedback", {"prediction_id": answers[-1].headers["x-prediction-id"], "truth": {}})
        assert fb.status_code in (404, 503)  # dropped, or the log cannot be asked
        pg.start()
        _wait_logged(svc, 2)  # the writer reconnects and writes what the buffer kept
        assert _metric(svc, "nb2svc_prediction_log_up") == 1
    finally:
        try:
            pg.stop()
        except Exception:  # noqa: S110  # already stopped
            pass


def test_feedback_through_the_kernel_gateway(scorer: Path, tmp_path: Path) -> None:
    from .test_kernel_gateway import gateway

    url = f"sqlite:///{tmp_path / 'kg.sqlite'}"
    svc = gateway(tmp_path, scorer, {"NB2SVC_LOG_URL": url}, kernels=2).start()
    try:
        answers = [svc.post("/invoke", {"x": float(i)}) for i in range(6)]
        assert all(a.status_code == 200 for a in answers)
        ids = [a.headers["x-prediction-id"] for a in answers]
        assert len(set(ids)) == 6
        fb = svc.post("/feedback", {"prediction_id": ids[0], "truth": {"label": "pos"}})
        assert fb.status_code == 204, fb.text
        assert svc.post("/feedback", {"prediction_id": ids[1], "truth": {"score": "x"}}).status_code == 422
        time.sleep(1)
        db = open_log(url)  # both kernels write to the one file
        assert {r.id for r in db.read("scorer")} == set(ids)
        db.close()
    finally:
        svc.stop()
