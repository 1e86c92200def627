"""`nb2svc deploy` on a real single-node Swarm (scripts/docker-setup), with real images from the local registry.

One deployment goes through its life in file order, as a user would take it: two replicas behind one URL,
a rolling update under load, a version whose setup raises refused, rollback, scale, a killed replica,
placement, park / resume / destroy. Bad input comes last. Swarm's timings are shortened through the
settings (NB2SVC_SWARM_*): a 1 s health check, a 2 s monitor window.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from nb2svc import inspect_notebook
from nb2svc.build import build, push
from nb2svc.deploy.swarm_spec import constraint, meets
from nb2svc.render import BuildOptions, render

from .conftest import BASE, OS_IMAGE

REGISTRY = "127.0.0.1:5000"
RUN = uuid.uuid4().hex[:8]
REPO = f"{REGISTRY}/nb2svc-deploy-test/{RUN}"
NAME = f"nb2svc-t-{RUN}"
NAME_LABEL = "nb2svc.deploy.name"
SETTINGS = {
    "NB2SVC_SWARM_HEALTH_INTERVAL": "1",
    "NB2SVC_SWARM_START_PERIOD": "90",  # a loaded 2-core machine starts a replica in 2-15 s
    "NB2SVC_SWARM_MONITOR": "2",
    "NB2SVC_SWARM_STOP_GRACE": "5",
    "NB2SVC_SWARM_PLACEMENT_WAIT": "2",
    "NB2SVC_SWARM_TIMEOUT": "240",
}


def test_a_node_constraint_is_a_label_a_host_name_or_swarms_own() -> None:
    assert constraint("zone=eu1") == "node.labels.zone==eu1"
    assert constraint("worker-3") == "node.hostname==worker-3"
    assert constraint("node.role!=manager") == "node.role!=manager"
    node = {"ID": "x", "Spec": {"Role": "manager", "Labels": {"zone": "eu1"}}, "Description": {"Hostname": "vm"}}
    assert meets(node, "node.labels.zone==eu1") and not meets(node, "node.labels.zone==us2")
    assert meets(node, "node.hostname==vm") and meets(node, "node.role!=worker")
    assert meets(node, "node.platform.os==linux") is None  # left to the scheduler


def _notebook(path: Path, version: str, *, setup_raises: bool = False) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(new_code_cell(f"VERSION = {version!r}"))
    nb.cells.append(new_code_cell("raise ValueError('no model file')" if setup_raises else "import math"))
    nb.cells.append(new_code_cell("x: int = 1", metadata={"tags": ["parameters"]}))
    nb.cells.append(new_code_cell("version: str = VERSION\ny: int = x * 2", metadata={"tags": ["outputs"]}))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def images(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """v1 and v2 answer their version; v3's setup raises; plain is the OS image, no nb2svc labels."""
    tmp = tmp_path_factory.mktemp("deploy")
    refs = {}
    for version in ("v1", "v2", "v3"):
        nb = _notebook(tmp / version / "answer.ipynb", version, setup_raises=version == "v3")
        ref = f"{REPO}/answer:{version}"
        # openfaas answering in its own process (NB2SVC_WORKERS=0): the leanest replica to start
        options = BuildOptions(backend="openfaas", base=BASE, env=(("NB2SVC_WORKERS", "0"),))
        build(render(inspect_notebook(nb), tmp / version / "ctx", options, ref), ref, client=client)
        push(ref, client=client)
        refs[version] = ref
    refs["plain"] = f"{REPO}/plain:1"
    client.images.get(OS_IMAGE).tag(refs["plain"])
    push(refs["plain"], client=client)
    yield refs
    for ref in refs.values():
        client.images.remove(ref, force=True)  # untags; Swarm may not have removed its containers yet


@pytest.fixture(scope="module")
def cleanup(client: Any) -> Iterator[None]:
    """Whatever a failed test left of this run's deployments is removed at the end."""
    yield
    for service in client.services.list(filters={"label": NAME_LABEL}):
        if RUN in service.name:
            service.remove()
    for c in client.containers.list(all=True, filters={"label": NAME_LABEL}):
        if RUN in c.name:
            c.remove(force=True)
    deadline = time.monotonic() + 60
    for net in client.networks.list(filters={"label": NAME_LABEL}):
        while RUN in net.name and time.monotonic() < deadline:
            try:
                net.remove()
                break
            except Exception:
                time.sleep(1)


def nb2svc(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nb2svc.cli", *args],
        env={**os.environ, **SETTINGS, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(*args: str) -> Any:
    """Run a command that prints --json; its parsed output."""
    done = nb2svc(*args, "--json", *(("--quiet",) if args[0] != "deployments" else ()))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def failed(*args: str, code: int = 1, env: dict[str, str] | None = None) -> str:
    """Run a command that must fail with ``code``: its one error line (and hint), no traceback."""
    done = nb2svc(*args, env=env, timeout=120)
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stderr[done.stderr.index("Error: ") :]


def listed(name: str = NAME) -> dict[str, Any] | None:
    return next((d for d in ok("deployments") if d["name"] == name), None)


@dataclass
class Probe:
    """Requests to URL/invoke at ~25 a second from a thread, until stopped (at most ``max_s``)."""

    url: str
    max_s: float = 150
    results: list[tuple[int | str, str | None, str | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        with httpx.Client(timeout=10) as http:
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    r = http.post(f"{self.url}/invoke", json={"x": 1})
                    version = r.json().get("version") if r.status_code == 200 else r.text[:200]
                    self.results.append((r.status_code, version, r.headers.get("x-nb2svc-instance")))
                except httpx.HTTPError as e:
                    self.results.append((type(e).__name__, None, None))
                self._stop.wait(max(0.0, 0.04 - (time.monotonic() - started)))

    def failures(self) -> list[Any]:
        return [r for r in self.results if r[0] != 200]

    def versions(self) -> Counter[str | None]:
        return Counter(v for status, v, _ in self.results if status == 200)


def instances(url: str, n: int = 30) -> set[str]:
    """The X-Nb2svc-Instance values of ``n`` answers at ``url``."""
    with httpx.Client(timeout=10) as http:
        return {http.post(f"{url}/invoke", json={"x": 1}).headers["x-nb2svc-instance"] for _ in range(n)}


def task_containers(client: Any, name: str = NAME) -> list[Any]:
    return client.containers.list(filters={"label": f"com.docker.swarm.service.name={name}"})


def version_at(url: str) -> str:
    return str(httpx.post(f"{url}/invoke", json={"x": 1}, timeout=10).json()["version"])


state: dict[str, Any] = {}  # what the tests below hand on: the deployment's URL


@pytest.mark.docker
@pytest.mark.slow
def test_two_replicas_answer_at_one_url(client: Any, images: dict[str, str], cleanup: None) -> None:
    d = ok("deploy", images["v1"], "--name", NAME, "--replicas", "2")
    assert {k: d[k] for k in ("name", "image", "replicas", "running", "state")} == {
        "name": NAME,
        "image": images["v1"],
        "replicas": 2,
        "running": 2,
        "state": "running",
    }
    assert d["url"].startswith("http://127.0.0.1:")
    state["url"] = d["url"]
    # both replicas answer behind the one URL: the containers Swarm runs, by their host names
    assert instances(d["url"]) == {c.id[:12] for c in task_containers(client)}
    assert version_at(d["url"]) == "v1"
    row = listed()
    assert row is not None
    assert {k: row[k] for k in ("notebook", "kind", "url", "state")} == {
        "notebook": "answer.ipynb",
        "kind": "serving",
        "url": d["url"],
        "state": "running",
    }
    table = nb2svc("deployments").stdout
    assert NAME in table and "answer.ipynb" in table and "2/2" in table


@pytest.mark.docker
@pytest.mark.slow
def test_a_rolling_update_under_load_loses_no_request(images: dict[str, str]) -> None:
    with Probe(state["url"]) as probe:
        d = ok("deploy", images["v2"], "--name", NAME)
        time.sleep(3)
    assert d["url"] == state["url"] and d["image"] == images["v2"] and d["running"] == 2
    assert probe.failures() == []
    assert set(probe.versions()) == {"v1", "v2"}, probe.versions()  # the update happened under load
    assert [v for _, v, _ in probe.results[-20:]] == ["v2"] * 20


@pytest.mark.docker
@pytest.mark.slow
def test_a_version_whose_setup_raises_is_refused_and_the_old_one_keeps_serving(images: dict[str, str]) -> None:
    with Probe(state["url"]) as probe:
        error = failed("deploy", images["v3"], "--name", NAME, "--quiet")
        time.sleep(2)
    assert "setup failed: cell 2 raised ValueError: no model file" in error, error
    assert images["v3"] in error
    assert probe.failures() == [] and set(probe.versions()) == {"v2"}, (probe.failures()[:5], probe.versions())
    row = listed()
    assert row is not None and (row["image"], row["state"], row["running"]) == (images["v2"], "running", 2)


@pytest.mark.docker
@pytest.mark.slow
def test_rollback_brings_the_version_before_back(images: dict[str, str]) -> None:
    d = ok("rollback", NAME)
    assert (d["image"], d["previous"], d["running"], d["url"]) == (images["v1"], images["v2"], 2, state["url"])
    assert version_at(state["url"]) == "v1"


@pytest.mark.docker
@pytest.mark.slow
def test_scale_to_three_healthy_replicas(client: Any) -> None:
    d = ok("scale", NAME, "3")
    assert (d["replicas"], d["running"], d["state"]) == (3, 3, "running")
    assert instances(state["url"]) == {c.id[:12] for c in task_containers(client)}
    assert len(task_containers(client)) == 3


@pytest.mark.docker
@pytest.mark.slow
def test_a_killed_replica_is_replaced_and_almost_no_request_fails(client: Any) -> None:
    before = {c.id[:12] for c in task_containers(client)}
    victim = task_containers(client)[0]
    with Probe(state["url"], max_s=90) as probe:
        time.sleep(1)
        victim.kill()
        healed: set[str] = set()
        deadline = time.monotonic() + 80
        while time.monotonic() < deadline:  # read through the SDK: a CLI call a second would load the machine
            tasks = client.services.get(NAME).tasks(filters={"desired-state": "running"})
            healed = {c.id[:12] for c in task_containers(client)}
            if [t["Status"]["State"] for t in tasks] == ["running"] * 3 and len(healed) == 3 and healed != before:
                break
            time.sleep(1)
        time.sleep(3)
    assert len(healed) == 3 and victim.id[:12] not in healed, healed
    assert healed - before <= {i for _, _, i in probe.results}  # the new replica takes requests
    assert len(probe.failures()) <= len(probe.results) / 100, (probe.failures(), len(probe.results))
    row = listed()
    assert row is not None and (row["running"], row["state"]) == (3, "running")


@pytest.mark.docker
@pytest.mark.slow
def test_a_placement_no_node_meets_is_an_error_naming_it(client: Any, images: dict[str, str]) -> None:
    other = f"{NAME}-pinned"
    error = failed("deploy", images["v1"], "--name", other, "--node", "zone=nowhere")
    assert "node.labels.zone==nowhere" in error and "docker node update --label-add" in error
    # one the scheduler alone can judge: its task stays pending ("no suitable node") and is reported
    error = failed("deploy", images["v1"], "--name", other, "--node", "node.platform.os==plan9")
    assert "node.platform.os==plan9" in error and "no suitable node" in error, error
    assert not client.services.list(filters={"name": other})
    assert not client.networks.list(filters={"label": f"{NAME_LABEL}={other}"})
    # an existing deployment asked for it stays as it was
    error = failed("deploy", "--name", NAME, "--node", "zone=nowhere")
    assert "node.labels.zone==nowhere" in error
    row = listed()
    assert row is not None and (row["image"], row["running"], row["state"]) == (images["v1"], 3, "running")


@pytest.mark.docker
@pytest.mark.slow
def test_decommission_parks_then_deploy_resumes_then_destroy_leaves_nothing(client: Any) -> None:
    done = nb2svc("decommission", NAME, "--quiet")
    assert done.returncode == 0, done.stderr
    row = listed()
    assert row is not None and (row["state"], row["replicas"], row["running"]) == ("parked", 0, 0)
    assert httpx.get(f"{state['url']}/health", timeout=10).status_code == 503  # the LB answers, no replica

    d = ok("deploy", "--name", NAME)
    assert (d["state"], d["replicas"], d["running"], d["url"]) == ("running", 3, 3, state["url"])
    assert version_at(state["url"]) == "v1"

    done = nb2svc("decommission", NAME, "--destroy", "--quiet")
    assert done.returncode == 0, done.stderr
    assert listed() is None
    assert not client.services.list(filters={"label": f"{NAME_LABEL}={NAME}"})
    assert not client.networks.list(filters={"label": f"{NAME_LABEL}={NAME}"})
    deadline = time.monotonic() + 30  # Swarm removes the task containers as they stop
    while client.containers.list(all=True, filters={"label": f"{NAME_LABEL}={NAME}"}):
        assert time.monotonic() < deadline, "containers left behind"
        time.sleep(1)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{state['url']}/health", timeout=5)


@pytest.mark.docker
@pytest.mark.slow
def test_bad_input_is_one_line_and_the_right_exit_code(images: dict[str, str], cleanup: None) -> None:
    unknown = f"{NAME}-unknown"
    for args in (
        ("rollback", unknown),
        ("scale", unknown, "2"),
        ("decommission", unknown),
        ("deploy", "--name", unknown),
    ):
        assert f"no deployment '{unknown}'" in failed(*args)
    assert "is not in the registry" in failed("deploy", f"{REPO}/answer:v9", "--name", unknown)
    error = failed("deploy", images["plain"], "--name", unknown)
    assert "not an nb2svc function image" in error and "nb2svc build" in error
    assert "not a DNS label" in failed("deploy", images["v1"], "--name", "Not_A_Name")


@pytest.fixture
def plain_docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second, real Docker daemon that is in no swarm; its DOCKER_HOST.

    It gets a bridge of its own: a daemon started with --bridge=none deletes the host's docker0.
    """
    for tool in ("dockerd", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed here (scripts/docker-setup installs Docker)")
    root = Path(f"/tmp/nb2svc-dt-{RUN}")  # unix socket paths are short
    bridge = f"nb2dt{RUN[:6]}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    proc = None
    try:
        proc = subprocess.Popen(
            [
                "dockerd",
                f"--data-root={root}/data",
                f"--exec-root={root}/x",
                f"--pidfile={root}/pid",
                f"--host=unix://{root}/sock",
                f"--bridge={bridge}",
                "--iptables=false",
                "--ip-forward=false",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not _answers(root / "sock"):
            assert proc.poll() is None and time.monotonic() < deadline, "the second dockerd did not start"
            time.sleep(0.2)
        yield f"unix://{root}/sock"
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        subprocess.run(["ip", "link", "del", bridge], check=False)
        shutil.rmtree(root, ignore_errors=True)


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=2) as http:
            return http.get("http://docker/_ping").status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.docker
@pytest.mark.slow
def test_a_docker_that_is_no_swarm_manager_is_named_with_the_fix(images: dict[str, str], plain_docker: str) -> None:
    for args in (("deployments",), ("deploy", images["v1"], "--name", NAME)):
        error = failed(*args, code=3, env={"DOCKER_HOST": plain_docker})
        assert "this Docker is not a swarm manager" in error and "docker swarm init" in error
