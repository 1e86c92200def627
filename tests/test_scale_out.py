"""SPEC section 7: two real `nb2svc serve` replicas of one training notebook sharing a real Redis
(NB2SVC_QUEUE_URL) and one runs folder, or moto's S3 server (NB2SVC_STORAGE_URL)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import NOTEBOOKS, RedisServer, Service, conforms

pytestmark = pytest.mark.slow
LEASE = "6"  # seconds: a lost replica's runs end within this (and one reaper pass) here; 15 s by default


def replicas(
    serve: Callable[..., Service], queue_url: str, runs: Path, names: tuple[str, ...] = ("a", "b"), **env: str
) -> dict[str, Service]:
    common = {"NB2SVC_QUEUE_URL": queue_url, "NB2SVC_RUNS_DIR": str(runs), "NB2SVC_LEASE": LEASE, **env}
    return {name: serve(NOTEBOOKS / "training.ipynb", {**common, "NB2SVC_INSTANCE": name}) for name in names}


def wait_for(svc: Service, run_id: str, done: Callable[[dict[str, Any]], bool], seconds: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = svc.http.get(f"/runs/{run_id}")
        if r.status_code == 200 and done(r.json()):
            return dict(r.json())
        time.sleep(0.1)
    raise AssertionError(f"run {run_id}: {svc.http.get(f'/runs/{run_id}').text}")


def finished(run: dict[str, Any]) -> bool:
    return run["status"] not in {"queued", "running"}


def test_two_replicas_share_queue_runs_and_files(serve: Callable[..., Service], redis_url: str, tmp_path: Path) -> None:
    both = replicas(serve, redis_url, tmp_path / "runs")
    a, b = both["a"], both["b"]
    openapi = a.http.get("/openapi.json").json()
    ids = []
    for n in range(8):
        r = (a, b)[n % 2].post("/runs", {"steps": n + 1, "sleep": 0.5})
        assert r.status_code == 202, r.text
        conforms(openapi, "/runs", "post", r)
        ids.append(r.json()["id"])
    runs = [wait_for(a, run_id, finished) for run_id in ids]
    assert [r["status"] for r in runs] == ["succeeded"] * 8, runs
    assert {r["instance"] for r in runs} == {"a", "b"}  # both replicas took work from the one queue
    for run in runs:
        for svc in (a, b):  # every route answers for every run, whichever replica ran it
            assert svc.http.get(f"/runs/{run['id']}").json()["outputs"] == run["outputs"]
            model = svc.http.get(f"/runs/{run['id']}/artifacts/model.json")
            assert model.status_code == 200 and json.loads(model.content)["steps"] == run["parameters"]["steps"]
            assert svc.http.get(f"/runs/{run['id']}/notebook").status_code == 200
            assert svc.http.get(f"/runs/{run['id']}/artifacts/../run.json").status_code == 404
    listed = b.http.get("/runs?limit=5")
    conforms(openapi, "/runs", "get", listed)
    rest = b.http.get(listed.links["next"]["url"]).json()
    assert [r["id"] for r in listed.json() + rest] == ids[::-1]
    assert not list((tmp_path / "runs").glob("*/run.json"))  # with Redis the folder holds only files
    assert 'nb2svc_runs{status="succeeded"}' in a.http.get("/metrics").text

    gone = b.http.delete(f"/runs/{ids[0]}")
    assert gone.status_code == 200 and a.http.get(f"/runs/{ids[0]}").status_code == 404
    assert not (tmp_path / "runs" / ids[0]).exists()


def test_a_cancel_reaches_the_run_on_the_other_replica(
    serve: Callable[..., Service], redis_url: str, tmp_path: Path
) -> None:
    both = replicas(serve, redis_url, tmp_path / "runs")
    run = both["a"].post("/runs", {"sleep": 60}).json()
    running = wait_for(both["a"], run["id"], lambda r: r["status"] == "running")
    other = both["b" if running["instance"] == "a" else "a"]
    r = other.post(f"/runs/{run['id']}/cancel")
    assert r.status_code == 200, r.text
    assert wait_for(other, run["id"], finished, 15)["status"] == "cancelled"
    queued = [both["a"].post("/runs", {"sleep": 60}).json() for _ in range(3)]  # two run, one waits
    waiting = next(q for q in queued if both["a"].http.get(f"/runs/{q['id']}").json()["status"] == "queued")
    assert both["b"].post(f"/runs/{waiting['id']}/cancel").json()["status"] == "cancelled"
    for q in queued:
        both["b"].http.delete(f"/runs/{q['id']}")
    assert both["a"].post("/runs?wait=60", {}).json()["status"] == "succeeded"


def test_a_replica_killed_mid_run_loses_nothing(serve: Callable[..., Service], redis_url: str, tmp_path: Path) -> None:
    both = replicas(serve, redis_url, tmp_path / "runs")
    run = both["a"].post("/runs", {"sleep": 120}).json()
    running = wait_for(both["a"], run["id"], lambda r: r["status"] == "running")
    victim = both[running["instance"]]
    survivor = both["b" if running["instance"] == "a" else "a"]
    done = survivor.post("/runs?wait=60", {"steps": 2}).json()
    assert done["status"] == "succeeded"
    assert victim.proc is not None
    os.killpg(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()

    lost = wait_for(survivor, run["id"], finished, 60)  # within the lease and one reaper pass
    assert lost["status"] == "failed" and lost["error"]["error"] == "lost_instance", lost
    assert running["instance"] in lost["error"]["message"]
    later = [survivor.post("/runs", {"steps": 4}).json() for _ in range(2)]  # the survivor keeps working
    assert [wait_for(survivor, r["id"], finished)["status"] for r in later] == ["succeeded"] * 2

    back = serve(
        NOTEBOOKS / "training.ipynb",
        {**victim.env, "NB2SVC_INSTANCE": running["instance"]},
    )
    for run_id in (run["id"], done["id"], *(r["id"] for r in later)):
        assert back.http.get(f"/runs/{run_id}").json()["status"] in {"failed", "succeeded"}
    assert back.http.get(f"/runs/{done['id']}/artifacts/model.json").status_code == 200
    assert back.post("/runs?wait=60", {}).json()["status"] == "succeeded"


def test_redis_down_is_a_503_with_the_cause_then_everything_goes_on(
    serve: Callable[..., Service], redis_own: RedisServer, tmp_path: Path
) -> None:
    both = replicas(serve, redis_own.url, tmp_path / "runs")
    a = both["a"]
    openapi = a.http.get("/openapi.json").json()
    first = a.post("/runs", {"sleep": 4}).json()
    queued = [a.post("/runs", {"steps": n}).json() for n in (1, 2, 3)]
    redis_own.stop()
    deadline = time.monotonic() + 10
    while a.http.get("/health").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    health = a.http.get("/health")
    assert health.status_code == 503 and health.json()["error"]["error"] == "queue_unavailable", health.text
    conforms(openapi, "/health", "get", health)
    refused = a.post("/runs", {})
    assert refused.status_code == 503 and refused.json()["cause"]["error"] == "queue_unavailable", refused.text
    assert "Redis" in refused.json()["message"]
    conforms(openapi, "/runs", "post", refused)
    assert both["b"].http.get(f"/runs/{first['id']}").status_code == 503  # no crash, no 500

    redis_own.start()
    for svc in both.values():
        deadline = time.monotonic() + 10
        while svc.http.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert svc.http.get("/health").status_code == 200
    for run in (first, *queued):  # no run lost: the one running finished, the queued ones ran
        assert wait_for(both["b"], run["id"], finished)["status"] == "succeeded"
    assert a.post("/runs?wait=60", {}).json()["status"] == "succeeded"


def test_s3_holds_notebooks_and_artifacts_for_every_replica(
    serve: Callable[..., Service], redis_url: str, s3_bucket: tuple[Any, str, dict[str, str]], tmp_path: Path
) -> None:
    client, bucket, aws = s3_bucket
    common = {"NB2SVC_QUEUE_URL": redis_url, "NB2SVC_STORAGE_URL": f"s3://{bucket}/runs", **aws}
    a = serve(NOTEBOOKS / "training.ipynb", {**common, "NB2SVC_INSTANCE": "a", "NB2SVC_RUNS_DIR": str(tmp_path / "a")})
    b = serve(NOTEBOOKS / "training.ipynb", {**common, "NB2SVC_INSTANCE": "b", "NB2SVC_RUNS_DIR": str(tmp_path / "b")})
    runs = [svc.post("/runs?wait=60", {"steps": n, "message": f"m{n}"}).json() for n, svc in ((2, a), (4, b))]
    assert [r["status"] for r in runs] == ["succeeded"] * 2, runs
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    for run in runs:
        assert {f"runs/{run['id']}/notebook.ipynb", f"runs/{run['id']}/artifacts/model.json"} <= keys
        for svc in (a, b):  # written by one replica, read through the other
            model = svc.http.get(f"/runs/{run['id']}/artifacts/model.json")
            assert model.status_code == 200 and json.loads(model.content)["message"] == run["outputs"]["echoed"]
            notebook = svc.http.get(f"/runs/{run['id']}/notebook")
            assert notebook.status_code == 200 and json.loads(notebook.text)["metadata"]["nb2svc"]["run"] == run["id"]
            for bad in ("missing.bin", "../notebook.ipynb", "..%2Fnotebook.ipynb", "%2E%2E/notebook.ipynb"):
                assert svc.http.get(f"/runs/{run['id']}/artifacts/{bad}").status_code == 404, bad
    assert b.http.delete(f"/runs/{runs[0]['id']}").status_code == 200
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert not [k for k in keys if runs[0]["id"] in k]
    assert a.http.get(f"/runs/{runs[0]['id']}/notebook").status_code == 404


def test_the_s3_cache_keeps_to_its_bound_least_recently_used_first(
    serve: Callable[..., Service], s3_bucket: tuple[Any, str, dict[str, str]], tmp_path: Path
) -> None:
    _, bucket, aws = s3_bucket
    runs_dir = tmp_path / "runs"
    env = {"NB2SVC_STORAGE_URL": f"s3://{bucket}/bounded", "NB2SVC_RUNS_DIR": str(runs_dir), **aws}
    svc = serve(NOTEBOOKS / "training.ipynb", {**env, "NB2SVC_S3_CACHE_BYTES": "1"})
    first, second = (svc.post("/runs?wait=60", {"steps": n, "message": "m"}).json() for n in (2, 3))
    assert [first["status"], second["status"]] == ["succeeded"] * 2, (first["error"], second.get("error"))
    cache = runs_dir / ".s3-cache"

    def cached() -> set[str]:
        return {p.parent.name for p in cache.rglob("notebook.ipynb")}

    assert svc.http.get(f"/runs/{first['id']}/notebook").status_code == 200
    assert cached() == {first["id"]}
    old = time.time() - 60  # used a minute ago: past the few seconds a response may still be opening it
    os.utime(cache / first["id"] / "notebook.ipynb", (old, old))
    assert svc.http.get(f"/runs/{second['id']}/notebook").status_code == 200
    assert cached() == {second["id"]}  # over the bound: the least recently used went, the one just fetched stays
    again = svc.http.get(f"/runs/{first['id']}/notebook")  # downloaded again
    assert again.status_code == 200 and json.loads(again.text)["metadata"]["nb2svc"]["run"] == first["id"]
    assert cached() == {first["id"], second["id"]}  # the second was used a moment ago: kept although over the bound
