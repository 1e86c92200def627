"""`nb2svc deploy --replicas 2 --with-redis` of a training function on the real single-node Swarm (SPEC §7).

Two replicas behind one URL share a Redis that nb2svc runs beside them (built from Debian's redis-server) and
one runs volume: every run, its notebook and its artifacts answer through the URL whichever replica ran it or
answers, a cancel reaches the run, parking keeps the runs (Redis's volume), and --destroy removes everything.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from nb2svc import inspect_notebook
from nb2svc.build import build, push
from nb2svc.deploy.swarm_spec import Plan, Release, SwarmSettings, service_kwargs
from nb2svc.render import BuildOptions, render

from .conftest import BASE, NOTEBOOKS
from .test_deploy_swarm import NAME_LABEL, REGISTRY, nb2svc

RUN = uuid.uuid4().hex[:8]
NAME = f"nb2svc-tt-{RUN}"
PART_OF = "nb2svc.deploy.part-of"


def test_the_redis_and_the_runs_volume_are_kept_in_the_services_labels_and_mounted() -> None:
    """What an update or a resume reads back: a Plan from the spec it wrote (no Docker needed)."""
    plan = Plan(
        name="train",
        release=Release("127.0.0.1:5000/team/train:v1", kind="training"),
        replicas=2,
        network="nb2svc-train",
        url="http://127.0.0.1:1",
        env={"NB2SVC_QUEUE_URL": "redis://:pw@train-redis:6379/0"},
        runs_volume="nb2svc-train-runs",
        redis="train-redis",
    )
    spec = service_kwargs(plan, SwarmSettings())
    container = {"Env": spec["env"]}
    back = Plan.from_service({"Spec": {"Labels": spec["labels"], "TaskTemplate": {"ContainerSpec": container}}})
    assert (back.runs_volume, back.redis, back.env) == ("nb2svc-train-runs", "train-redis", plan.env)
    [mount] = spec["mounts"]
    assert (mount["Source"], mount["Target"], mount["Type"]) == ("nb2svc-train-runs", "/var/lib/nb2svc/runs", "volume")
    assert mount["VolumeOptions"]["Labels"] == {PART_OF: "train"}
    plain = service_kwargs(replace(plan, runs_volume=None, env={"NB2SVC_RUNS_DIR": "/data"}), SwarmSettings())
    assert plain["mounts"] == [] and "nb2svc.deploy.runs.volume" not in plain["labels"]
    assert replace(plan, env={"NB2SVC_RUNS_DIR": "/data"}).runs_dir == "/data"


@pytest.fixture(scope="module")
def image(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ref = f"{REGISTRY}/nb2svc-deploy-test/{RUN}/train:v1"
    context = render(
        inspect_notebook(NOTEBOOKS / "training.ipynb"),
        tmp_path_factory.mktemp("train") / "ctx",
        BuildOptions(backend="openfaas", base=BASE),
        ref,
    )
    build(context, ref, client=client)
    push(ref, client=client)
    yield ref
    client.images.remove(ref, force=True)


@pytest.fixture(scope="module")
def cleanup(client: Any) -> Iterator[None]:
    """Whatever a failed test left of this deployment is removed at the end: services, containers, volumes."""
    yield
    for label in (f"{NAME_LABEL}={NAME}", f"{PART_OF}={NAME}"):
        for service in client.services.list(filters={"label": label}):
            service.remove()
    for c in client.containers.list(all=True, filters={"label": f"{NAME_LABEL}={NAME}"}):
        c.remove(force=True)
    deadline = time.monotonic() + 60
    for kind, label in ((client.volumes, PART_OF), (client.networks, NAME_LABEL)):
        for item in kind.list(filters={"label": f"{label}={NAME}"}):
            while time.monotonic() < deadline:
                try:
                    item.remove()
                    break
                except Exception:
                    time.sleep(1)


def ok(*args: str) -> Any:
    done = nb2svc(*args, "--json", *(("--quiet",) if args[0] != "deployments" else ()))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_for(http: httpx.Client, run_id: str, statuses: set[str], seconds: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = http.get(f"/runs/{run_id}")
        if r.status_code == 200 and r.json()["status"] in statuses:
            return dict(r.json())
        time.sleep(0.2)
    raise AssertionError(f"run {run_id}: {http.get(f'/runs/{run_id}').text}")


@pytest.mark.docker
@pytest.mark.slow
def test_two_training_replicas_share_a_redis_and_a_runs_volume(client: Any, image: str, cleanup: None) -> None:
    done = nb2svc("deploy", image, "--name", NAME, "--replicas", "2", "--with-redis", "--json")
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    redis = f"{NAME}-redis"
    assert (d["replicas"], d["running"], d["state"], d["kind"]) == (2, 2, "running", "training")
    assert d["redis"] == {"service": redis, "running": 1, "replicas": 1}
    assert d["runs_volume"] == f"nb2svc-{NAME}-runs"
    assert f"creating service {redis}" in done.stderr
    spec = client.services.get(NAME).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    env = dict(e.partition("=")[::2] for e in spec["Env"])
    assert env["NB2SVC_QUEUE_URL"].startswith("redis://:") and env["NB2SVC_QUEUE_URL"].endswith(f"@{redis}:6379/0")
    assert [(m["Source"], m["Target"]) for m in spec["Mounts"]] == [(d["runs_volume"], "/var/lib/nb2svc/runs")]

    with httpx.Client(base_url=d["url"], timeout=30) as http:
        ids = []
        for n in range(6):
            r = http.post("/runs", json={"steps": n + 1, "sleep": 1.5})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        runs = [wait_for(http, run_id, {"succeeded", "failed", "cancelled"}) for run_id in ids]
        assert [r["status"] for r in runs] == ["succeeded"] * 6, runs
        assert len({r["instance"] for r in runs}) == 2, runs  # both replicas took work from the one queue
        answered = set()
        for run in runs:
            for _ in range(3):  # through the load balancer: each answer may come from either replica
                record = http.get(f"/runs/{run['id']}")
                answered.add(record.headers["x-nb2svc-instance"])
                assert record.json()["outputs"] == run["outputs"]
                model = http.get(f"/runs/{run['id']}/artifacts/model.json")
                assert model.status_code == 200, model.text
                assert json.loads(model.content)["steps"] == run["parameters"]["steps"]
                notebook = http.get(f"/runs/{run['id']}/notebook")
                assert notebook.status_code == 200
                assert notebook.json()["metadata"]["papermill"]["parameters"]["steps"] == run["parameters"]["steps"]
        assert answered == {r["instance"] for r in runs}, answered

        long = http.post("/runs", json={"sleep": 120}).json()
        wait_for(http, long["id"], {"running"})
        cancelled = http.post(f"/runs/{long['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert wait_for(http, long["id"], {"cancelled", "failed", "succeeded"}, 30)["status"] == "cancelled"

    row = next(r for r in ok("deployments") if r["name"] == NAME)
    assert row["redis"] == {"service": redis, "running": 1, "replicas": 1}
    table = nb2svc("deployments").stdout
    assert "redis" in table and "1/1" in table

    # parked: the replicas and Redis stop, the volumes stay; resumed, every run is still there
    done = nb2svc("decommission", NAME, "--quiet")
    assert done.returncode == 0, done.stderr
    row = next(r for r in ok("deployments") if r["name"] == NAME)
    assert (row["state"], row["replicas"], row["redis"]) == (
        "parked",
        0,
        {"service": redis, "running": 0, "replicas": 0},
    )
    d = ok("deploy", "--name", NAME)
    assert (d["running"], d["redis"]["running"]) == (2, 1)
    with httpx.Client(base_url=d["url"], timeout=30) as http:
        assert [http.get(f"/runs/{i}").json()["status"] for i in ids] == ["succeeded"] * 6
        assert http.get(f"/runs/{ids[0]}/artifacts/model.json").status_code == 200
        assert http.post("/runs?wait=60", json={}).json()["status"] == "succeeded"

    done = nb2svc("decommission", NAME, "--destroy")
    assert done.returncode == 0, done.stderr
    assert f"removed service {redis}" in done.stderr and f"removed volume nb2svc-{NAME}-redis" in done.stderr
    for label in (f"{NAME_LABEL}={NAME}", f"{PART_OF}={NAME}"):
        assert not client.services.list(filters={"label": label})
        assert not client.networks.list(filters={"label": label})
    assert not client.volumes.list(filters={"label": f"{PART_OF}={NAME}"})
    assert all(r["name"] != NAME for r in ok("deployments"))


@pytest.mark.docker
@pytest.mark.slow
def test_with_redis_is_for_training_on_swarm(image: str, cleanup: None) -> None:
    done = nb2svc("deploy", image, "--name", f"{NAME}-k", "--target", "kubernetes", "-o", "/tmp/x", "--with-redis")
    assert done.returncode == 2 and "--with-redis is for --target swarm" in done.stderr, done.stderr
    done = nb2svc("deploy", image, "--name", f"{NAME}-q", "--with-redis", "--queue", "redis://r:6379/0")
    assert done.returncode == 1 and "--with-redis and --queue" in done.stderr, done.stderr
