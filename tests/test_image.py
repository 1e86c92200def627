"""Images for real: render → build → push → remove → pull → run → the contract, for both backends.

Needs what `scripts/docker-setup` starts: dockerd, a registry on 127.0.0.1:5000, and the OS image
nb2svc-test/debian:bookworm (debootstrap, no Docker Hub).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import nbformat
import pytest

from nb2svc import inspect_notebook, openapi_document
from nb2svc.build import build, pull, push, run
from nb2svc.errors import Nb2svcError
from nb2svc.image import BuildError
from nb2svc.render import Artifact, BuildOptions, render

from .conftest import BASE, NOTEBOOKS, OS_IMAGE, free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REGISTRY = "127.0.0.1:5000"
SAMPLE = Path(__file__).parent.parent / "sample_notebooks" / "iris_nearest.ipynb"


def _layers(client: Any, ref: str) -> Iterator[tuple[str, bytes]]:
    """(path, content) of every file in every layer of the image."""
    data = b"".join(client.images.get(ref).save())
    outer = tarfile.open(fileobj=io.BytesIO(data))
    for member in outer.getmembers():
        if member.name.endswith("layer.tar"):
            layer = tarfile.open(fileobj=outer.extractfile(member))
            for f in layer.getmembers():
                if f.isfile():
                    yield f.name, layer.extractfile(f).read()  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", ["kernel-gateway", "openfaas"])
def test_build_push_pull_run_answers_the_contract(
    client: Any, containers: list[str], tmp_path: Path, backend: str
) -> None:
    spec = inspect_notebook(SAMPLE)
    ref = f"{REGISTRY}/test/iris-{backend}:{spec.sha256[:8]}"
    context = render(spec, tmp_path / "ctx", BuildOptions(backend=backend, base=BASE), ref)  # type: ignore[arg-type]
    image = build(context, ref, client=client)
    pushed = push(ref, client=client)
    assert pushed.startswith(f"{REGISTRY}/test/iris-{backend}@sha256:")
    client.images.remove(ref, force=True)
    pull(ref, client=client)

    labels = client.images.get(ref).labels
    assert labels["nb2svc.kind"] == "serving" and labels["nb2svc.backend"] == backend
    assert labels["nb2svc.notebook.sha256"] == spec.sha256
    assert json.loads(labels["nb2svc.openapi"]) == json.loads(json.dumps(openapi_document(spec)))
    assert labels["org.opencontainers.image.title"] == "iris_nearest"
    revision = labels["org.opencontainers.image.revision"]  # built from this git checkout
    assert labels["nb2svc.git.commit"] == revision
    # Every label of labels.json. The commit labels name the commit the image was first built from:
    # the same context at a later commit (a leftover image from an earlier run) is the same image.
    commit_labels = {"org.opencontainers.image.revision", "nb2svc.git.commit"}
    assert {k: labels.get(k) for k in context.labels if k not in commit_labels} == {
        k: v for k, v in context.labels.items() if k not in commit_labels
    }
    if image.cached:  # a commit of some earlier checkout, maybe one this clone lacks
        assert re.fullmatch(r"[0-9a-f]{40}", revision)
    else:
        assert revision == context.labels["org.opencontainers.image.revision"]
    assert client.images.get(ref).attrs["Config"]["Healthcheck"]["Test"][0] == "CMD"
    assert image.id == client.images.get(ref).id

    running = run(ref, port=free_port(), client=client)
    containers.append(running.container_id)
    ok = httpx.post(f"{running.url}/invoke", json={"features": [6.7, 3.0, 5.2, 2.3]}, timeout=30)
    assert ok.status_code == 200 and ok.json()["label"] == "virginica"
    bad = httpx.post(f"{running.url}/invoke", json={"features": "x", "zzz": 1}, timeout=30)
    assert bad.status_code == 422 and {d["field"] for d in bad.json()["detail"]} == {"features", "zzz"}
    served = httpx.get(f"{running.url}/openapi.json", timeout=30).json()
    cli = subprocess.run(
        [sys.executable, "-m", "nb2svc.cli", "inspect", "--openapi", str(SAMPLE)], capture_output=True, check=True
    )
    assert served == json.loads(cli.stdout)
    container = client.containers.get(running.container_id)
    assert container.exec_run("id -u").output.strip() == b"10001"  # not root


def test_editing_code_reuses_the_dependency_layers_and_no_secret_is_left(client: Any, tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOKS / "raises.ipynb", as_version=4)
    nb.cells[0].source = "%pip install six==1.16.0\nimport math, six"
    path = tmp_path / "with_deps.ipynb"
    nbformat.write(nb, path)
    log: list[str] = []
    first = build(
        render(inspect_notebook(path), tmp_path / "a", BuildOptions(base=BASE)),
        "nb2svc-test/deps:1",
        client=client,
        progress=log.append,
        no_cache=True,  # a cold build, whatever an earlier run left in Docker's cache
    )
    assert any("Successfully installed six-1.16.0" in line for line in log)

    nb.cells[2].source += f"\ny = y * 1  # a code edit, new on every run: {uuid.uuid4()}"
    nbformat.write(nb, path)
    log.clear()
    second = build(
        render(inspect_notebook(path), tmp_path / "b", BuildOptions(base=BASE)),
        "nb2svc-test/deps:2",
        client=client,
        progress=log.append,
    )
    assert second.id != first.id
    steps = _step_cache(log)
    assert steps["RUN set -eu; mkdir -p /opt/nb2svc/user"] and steps["COPY --from=deps"]
    assert steps["COPY runtime/"]
    assert not steps["COPY service/"]  # the notebook's own layer, the only one rebuilt

    again = build(
        render(inspect_notebook(path), tmp_path / "c", BuildOptions(base=BASE)), "nb2svc-test/deps:3", client=client
    )
    assert again.cached and again.id == second.id  # the same content: nothing built

    secrets = {(tmp_path / "b" / "build/pip" / f).read_bytes() for f in ("ca.pem", "pip.conf")}
    assert len(b"".join(secrets)) > 1000  # the deps stage did get the host's CA bundle
    for name, content in _layers(client, "nb2svc-test/deps:2"):
        assert not name.endswith(("nb2svc-pip/ca.pem", "nb2svc-pip/pip.conf")), name
        assert content not in secrets, f"the build's pip settings are in {name}"


def test_a_rebuilt_base_under_the_same_tag_is_not_a_no_op(client: Any, tmp_path: Path) -> None:
    """The no-op short-circuit keys on the base image's id too: new base packages mean a new image."""
    moving = "nb2svc-test/base:moving"
    spec = inspect_notebook(NOTEBOOKS / "raises.ipynb")

    run = uuid.uuid4().hex[:12]  # new bases on every run: an earlier run's images must not answer

    def rebase(label: str) -> None:
        (tmp_path / label).mkdir()
        (tmp_path / label / "Dockerfile").write_text(f"FROM {BASE}\nLABEL nb2svc-test.generation={label}-{run}\n")
        client.images.build(path=str(tmp_path / label), tag=moving, rm=True)

    rebase("one")
    first = build(render(spec, tmp_path / "a", BuildOptions(base=moving)), "nb2svc-test/moving:1", client=client)
    again = build(render(spec, tmp_path / "b", BuildOptions(base=moving)), "nb2svc-test/moving:1", client=client)
    assert again.cached and again.id == first.id
    rebase("two")
    log: list[str] = []
    context = render(spec, tmp_path / "c", BuildOptions(base=moving))
    rebuilt = build(context, "nb2svc-test/moving:1", client=client, progress=log.append)
    assert not rebuilt.cached and rebuilt.id != first.id
    assert client.images.get(rebuilt.id).labels["nb2svc-test.generation"] == f"two-{run}"
    assert not any("nothing to build" in line for line in log)


def test_a_new_model_rebuilds_only_the_artifact_and_notebook_layers(client: Any, tmp_path: Path) -> None:
    """--artifact bakes weights into a layer of their own; --env values stay data ($, quotes)."""
    model = tmp_path / "model"
    model.mkdir()
    # New on every run, so the first build goes through the builder (its deps stage is in the cache
    # for the second build), not a re-tag of an image a run before this one left.
    original = f"generation one, {uuid.uuid4()}".encode()
    (model / "weights.bin").write_bytes(original)
    spec = inspect_notebook(NOTEBOOKS / "raises.ipynb")
    options = BuildOptions(
        base=BASE,
        artifacts=(Artifact.parse(str(model)),),
        env=(("MODEL_DIR", "/srv/nb2svc/artifacts/model"), ("ODD", 'a "quoted" $HOME \\ value')),
    )
    first = build(render(spec, tmp_path / "a", options), "nb2svc-test/model:1", client=client)

    def cat(image: str, path: str) -> bytes:
        container = client.containers.run(image, ["cat", path], detach=True)
        try:
            assert container.wait(timeout=60)["StatusCode"] == 0
            return container.logs(stderr=False)  # type: ignore[no-any-return]
        finally:
            container.remove(force=True)

    assert cat(first.id, "/srv/nb2svc/artifacts/model/weights.bin") == original
    env = dict(e.split("=", 1) for e in client.images.get(first.id).attrs["Config"]["Env"])
    assert env["MODEL_DIR"] == "/srv/nb2svc/artifacts/model"
    assert env["ODD"] == 'a "quoted" $HOME \\ value'
    baked = json.loads(client.images.get(first.id).labels["nb2svc.artifacts"])
    assert [a["path"] for a in baked] == ["/srv/nb2svc/artifacts/model"]

    retrained = f"generation two, {uuid.uuid4()}".encode()
    (model / "weights.bin").write_bytes(retrained)
    log: list[str] = []
    second = build(render(spec, tmp_path / "b", options), "nb2svc-test/model:2", client=client, progress=log.append)
    assert not second.cached and cat(second.id, "/srv/nb2svc/artifacts/model/weights.bin") == retrained
    steps = _step_cache(log)
    assert steps["COPY --from=deps"] and steps["COPY runtime/"]  # the dependency layers are reused
    assert not steps["COPY artifacts/"] and not steps["COPY service/"]


def _step_cache(log: list[str]) -> dict[str, bool]:
    """Each step's instruction prefix → whether Docker reused its cache."""
    out: dict[str, bool] = {}
    current = None
    for line in log:
        if line.startswith("Step "):
            current = line.split(" : ", 1)[1]
            out[current] = False
        elif current and "Using cache" in line:
            out[current] = True
    keys = [
        "RUN set -eu; mkdir -p /opt/nb2svc/user",
        "COPY --from=deps",
        "COPY runtime/",
        "COPY artifacts/",
        "COPY service/",
    ]
    return {k: any(v for step, v in out.items() if step.startswith(k)) for k in keys}


def test_system_packages_are_installed_with_apt(client: Any, tmp_path: Path) -> None:
    """metadata.nb2svc.system_packages: Debian's apt, from the mirror the base image names."""
    nb = nbformat.read(NOTEBOOKS / "raises.ipynb", as_version=4)
    nb.metadata["nb2svc"] = {"system_packages": ["jq"]}
    path = tmp_path / "needs_jq.ipynb"
    nbformat.write(nb, path)
    image = build(
        render(inspect_notebook(path), tmp_path / "ctx", BuildOptions(base=BASE)), "nb2svc-test/jq:1", client=client
    )
    out = client.containers.run(image.id, ["jq", "-n", "--argjson", "a", "[1,2]", "$a | add"], remove=True)
    assert out.strip() == b"3"  # run as the image's user (10001), jq on its PATH
    assert client.images.get(image.id).labels["nb2svc.system_packages"] == "jq"


def test_a_failing_pip_line_shows_the_steps_log(client: Any, tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOKS / "raises.ipynb", as_version=4)
    nb.cells[0].source = "%pip install nb2svc-no-such-package-xyz==9.9\nimport math"
    path = tmp_path / "bad_deps.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(BuildError) as info:
        build(
            render(inspect_notebook(path), tmp_path / "ctx", BuildOptions(base=BASE)),
            "nb2svc-test/bad:1",
            client=client,
        )
    assert "mkdir -p /opt/nb2svc/user" in str(info.value)  # names the failing step
    assert any("nb2svc-no-such-package-xyz" in line for line in info.value.log)
    r = subprocess.run(
        [sys.executable, "-m", "nb2svc.cli", "build", str(path), "-t", "nb2svc-test/bad:2", "--base", BASE],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "nb2svc-no-such-package-xyz" in r.stderr
    # progress into a pipe (a CI log): each of Docker's lines is one line, not cut at 80 columns
    step = next(line for line in r.stderr.splitlines() if line.startswith("Step ") and "/opt/nb2svc/user" in line)
    assert len(step) > 80 and "RUN set -eu; mkdir -p /opt/nb2svc/user" in step


def test_unreachable_registry_and_daemon_exit_3(client: Any) -> None:
    client.images.get(BASE).tag(f"127.0.0.1:{free_port()}/x/y", tag="1")
    ref = next(t for t in client.images.get(BASE).tags if t.startswith("127.0.0.1:") and "/x/y" in t)
    r = subprocess.run([sys.executable, "-m", "nb2svc.cli", "push", ref], capture_output=True, text=True)
    assert r.returncode == 3 and "pushing" in r.stderr
    client.images.remove(ref)
    env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "nb2svc.cli", "build", str(SAMPLE), "-t", "x:1"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 3 and "cannot reach the Docker daemon" in r.stderr


def test_a_from_image_that_cannot_be_pulled_exits_3(client: Any) -> None:
    """A watchdog image on an unreachable registry: the FROM step fails, exit 3 (external), named."""
    watchdog = f"127.0.0.1:{free_port()}/openfaas/of-watchdog:0.10"
    cmd = [sys.executable, "-m", "nb2svc.cli", "build", str(SAMPLE), "-t", "nb2svc-test/wd:1", "--base", BASE]
    r = subprocess.run(
        [*cmd, "--backend", "openfaas", "--watchdog-image", watchdog, "--quiet"], capture_output=True, text=True
    )
    assert r.returncode == 3, r.stderr
    assert f"FROM {watchdog}" in r.stderr and "neither here nor pullable" in r.stderr


def test_a_plain_os_image_as_base(client: Any, containers: list[str], tmp_path: Path) -> None:
    """--base takes any image with Python 3.11+: nb2svc builds its base layers on it first (cached)."""
    spec = inspect_notebook(SAMPLE)
    log: list[str] = []
    context = render(spec, tmp_path / "ctx", BuildOptions(backend="openfaas", base=OS_IMAGE))
    image = build(context, "nb2svc-test/iris-plain:1", client=client, progress=log.append)
    assert any("is not an nb2svc base" in line for line in log)
    derived = client.images.get("nb2svc/base:on-nb2svc-test-debian-bookworm")
    assert derived.labels["nb2svc.base"] == "1"
    running = run(image.ref, port=free_port(), client=client)
    containers.append(running.container_id)
    ok = httpx.post(f"{running.url}/invoke", json={"features": [5.1, 3.5, 1.4, 0.2]}, timeout=30)
    assert ok.status_code == 200 and ok.json()["label"] == "setosa"


@pytest.mark.parametrize("backend", ["kernel-gateway", "openfaas"])
def test_a_training_image_runs_jobs(client: Any, containers: list[str], tmp_path: Path, backend: str) -> None:
    notebook = SAMPLE.parent / "fit_line.ipynb"
    context = render(inspect_notebook(notebook), tmp_path / "ctx", BuildOptions(backend=backend, base=BASE))  # type: ignore[arg-type]
    image = build(context, f"nb2svc-test/fit-{backend}:1", client=client)
    assert client.images.get(image.ref).labels["nb2svc.kind"] == "training"
    running = run(image.ref, port=free_port(), client=client)
    containers.append(running.container_id)
    r = httpx.post(f"{running.url}/runs", params={"wait": 60}, json={"epochs": 50}, timeout=90)
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    run_id = r.json()["id"]
    model = httpx.get(f"{running.url}/runs/{run_id}/artifacts/model.json", timeout=30).json()
    assert model["parameters"]["epochs"] == 50 and model["slope"] == r.json()["outputs"]["slope"]
    notebook_json = httpx.get(f"{running.url}/runs/{run_id}/notebook", timeout=30).json()
    assert notebook_json["metadata"]["papermill"]["parameters"] == {"epochs": 50}


def test_a_mounted_runs_folder_the_image_user_cannot_write_is_reported_at_start(client: Any, tmp_path: Path) -> None:
    """The folder is root's; the service runs as 10001. `nb2svc run` says so, not a 500 on the first run."""
    notebook = SAMPLE.parent / "fit_line.ipynb"
    context = render(inspect_notebook(notebook), tmp_path / "ctx", BuildOptions(backend="openfaas", base=BASE))
    image = build(context, "nb2svc-test/fit-openfaas:1", client=client)
    if os.geteuid() == 10001:
        pytest.skip("the test's own user is the image's")
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o755)  # the test's user's (root in CI), not 10001's
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nb2svc.cli",
            "run",
            image.ref,
            "--port",
            str(free_port()),
            "--timeout",
            "90",
            "-v",
            f"{runs}:/var/lib/nb2svc/runs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    assert "cannot keep runs in /var/lib/nb2svc/runs: Permission denied" in r.stderr
    assert "chown 10001" in r.stderr  # the hint says what to do
    assert not list(runs.iterdir())


def test_run_reports_a_failed_setup_and_removes_the_container(client: Any, tmp_path: Path) -> None:
    context = render(
        inspect_notebook(NOTEBOOKS / "setup_fails.ipynb"), tmp_path / "ctx", BuildOptions(backend="openfaas", base=BASE)
    )
    image = build(context, "nb2svc-test/setup-fails:1", client=client)
    mine = {"ancestor": image.id}
    before = {c.id for c in client.containers.list(all=True, filters=mine)}
    started = time.monotonic()
    with pytest.raises(Nb2svcError, match="failed its setup: setup cell 1 raised RuntimeError: model file missing"):
        run(image.ref, port=free_port(), client=client, timeout=120)
    assert time.monotonic() - started < 60  # it does not wait for the timeout
    assert {c.id for c in client.containers.list(all=True, filters=mine)} <= before  # nothing left behind


def _exists(client: Any, container_id: str) -> bool:
    # One inspect, not containers.list(): list inspects every container it listed, and one that --rm removes
    # meanwhile makes it raise NotFound.
    try:
        client.containers.get(container_id)
    except docker.errors.NotFound:
        return False
    return True


def test_run_cli_with_rm_leaves_nothing_when_the_container_stops(client: Any, tmp_path: Path) -> None:
    context = render(inspect_notebook(SAMPLE), tmp_path / "ctx", BuildOptions(backend="openfaas", base=BASE))
    image = build(context, "nb2svc-test/iris-rm:1", client=client)
    port = free_port()
    r = subprocess.run(
        [sys.executable, "-m", "nb2svc.cli", "run", image.ref, "--port", str(port), "--rm", "--timeout", "90"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"http://127.0.0.1:{port}"
    short_id = r.stderr.split()[1]
    container = client.containers.get(short_id)
    try:
        assert httpx.get(f"{r.stdout.strip()}/health", timeout=10).status_code == 200
        container.stop(timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _exists(client, container.id):
            time.sleep(0.2)
        assert not _exists(client, container.id)
    finally:
        if _exists(client, container.id):
            container.remove(force=True)
