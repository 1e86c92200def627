"""`--target kubernetes`: the kustomization written for an image, checked offline.

No API server runs here: each manifest is validated (strict: no unknown field) against the JSON schemas of
several Kubernetes versions that kubernetes-validate bundles, compared byte for byte with golden files
(``NB2SVC_UPDATE_GOLDEN=1`` rewrites them), and, with Docker, the images are run as the pod spec says
(read-only root, its volumes, its user) to show that the runtime writes only where the manifest lets it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from nb2svc import inspect_notebook
from nb2svc.deploy.kubernetes import write_manifests
from nb2svc.deploy.labels import ImageInfo
from nb2svc.errors import Nb2svcError
from nb2svc.render import BuildOptions, image_labels

from .conftest import NOTEBOOKS, free_port

ROOT = Path(__file__).parent.parent
SAMPLES = ROOT / "sample_notebooks"
GOLDEN = Path(__file__).parent / "golden" / "kubernetes"
UPDATE_GOLDEN = os.environ.get("NB2SVC_UPDATE_GOLDEN") == "1"
# The three newest minors kubernetes-validate bundles, and the oldest still in wide use (EKS/GKE extended support)
KUBERNETES_VERSIONS = ("1.30", "1.35", "1.36", "1.37")
REF = "127.0.0.1:5000/team/iris:v1"
DIGEST = "sha256:" + "0123456789abcdef" * 4
COMMIT = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"  # not the checkout's HEAD: golden files outlive commits


def image_info(notebook: Path, *, ref: str = REF, digest: str | None = None, gpu: bool = False) -> ImageInfo:
    """What `deploy` reads from a built image: its labels, as `nb2svc build` writes them (no Docker needed)."""
    labels = image_labels(inspect_notebook(notebook), BuildOptions(gpu=gpu))
    labels["nb2svc.git.commit"] = COMMIT
    return ImageInfo.from_labels(ref, labels, digest)


CASES: dict[str, Callable[[Path], list[Path]]] = {
    "serving": lambda out: write_manifests(image_info(SAMPLES / "iris_nearest.ipynb", digest=DIGEST), "iris", out),
    "training": lambda out: write_manifests(
        image_info(NOTEBOOKS / "training.ipynb", ref="127.0.0.1:5000/team/train:v2"), "train", out
    ),
    # replicas sharing one queue and run store in Redis (SPEC section 7), files on a ReadWriteMany volume
    "training_shared": lambda out: write_manifests(
        image_info(NOTEBOOKS / "training.ipynb", ref="127.0.0.1:5000/team/train:v2"),
        "train",
        out,
        replicas=3,
        queue_url="redis://train-redis:6379/0",
    ),
    # gpu, cpu, memory and timeout from metadata.nb2svc; pinned to a zone; settings that look like YAML and $(refs)
    "gpu": lambda out: write_manifests(
        image_info(NOTEBOOKS / "k8s_gpu_resources.ipynb", digest=DIGEST),
        "scorer",
        out,
        replicas=3,
        node="zone=eu1",
        env={"MODEL_NAME": "resnet: 50 # v2", "GREETING": 'say "hi"\nto $(USER)', "FLAG": "yes"},
    ),
}


def manifests(files: list[Path]) -> dict[str, dict[str, Any]]:
    return {f.name: yaml.safe_load(f.read_text()) for f in files}


def pod_spec(docs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = docs["deployment.yaml"]["spec"]["template"]["spec"]
    return spec


def container(docs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    (c,) = pod_spec(docs)["containers"]
    return dict(c)


def k8s_expand(value: str, defined: Mapping[str, str]) -> str:
    """What the kubelet makes of an env value: $(VAR) is the value of an earlier VAR, $$ is $.

    A transcription of Kubernetes' third_party/forked/golang/expansion Expand and tryReadVariableName.
    """
    out, i = [], 0
    while i < len(value):
        if value[i] == "$" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = value.find(")", i + 2)
                if end != -1:
                    var = value[i + 2 : end]
                    out.append(defined.get(var, f"$({var})"))
                    i = end + 1
                    continue
                out.append("$(")
                i += 2
                continue
            out.append("$" + nxt)
            i += 2
            continue
        out.append(value[i])
        i += 1
    return "".join(out)


def effective_env(c: Mapping[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in c["env"]:
        env[item["name"]] = k8s_expand(item["value"], env)
    return env


# --- schemas and golden files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_manifest_is_valid_for_the_kubernetes_version(case: str, version: str, tmp_path: Path) -> None:
    docs = manifests(CASES[case](tmp_path))
    resources = [name for name in docs if name != "kustomization.yaml"]
    assert len(resources) == 4
    for name in resources:
        try:
            kubernetes_validate.validate(docs[name], version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{case}/{name} is not valid for Kubernetes {version}: {e.message} at {list(e.path)}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_manifests_match_the_golden_files(case: str, tmp_path: Path) -> None:
    files = CASES[case](tmp_path / "out")
    golden = GOLDEN / case
    if UPDATE_GOLDEN:
        shutil.rmtree(golden, ignore_errors=True)
        golden.mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, golden / f.name)
    assert golden.is_dir(), f"no golden files for {case}: NB2SVC_UPDATE_GOLDEN=1 writes them"
    assert sorted(p.name for p in golden.iterdir()) == sorted(f.name for f in files), "NB2SVC_UPDATE_GOLDEN=1 rewrites"
    for f in files:
        assert f.read_bytes() == (golden / f.name).read_bytes(), f"{case}/{f.name} (NB2SVC_UPDATE_GOLDEN=1 rewrites)"
    again = CASES[case](tmp_path / "again")  # the same input, the same bytes
    assert [f.read_bytes() for f in again] == [f.read_bytes() for f in files]


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_kustomization_lists_every_manifest_written_and_labels_them(case: str, tmp_path: Path) -> None:
    files = CASES[case](tmp_path)
    docs = manifests(files)
    kustomization = docs["kustomization.yaml"]
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == [f.name for f in files if f.name != "kustomization.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in files)
    (labels,) = kustomization["labels"]
    assert labels["includeSelectors"] is False  # a new commit must not change the immutable selector
    pairs = labels["pairs"]
    assert pairs["app.kubernetes.io/managed-by"] == "nb2svc" and pairs["nb2svc.git.commit"] == COMMIT
    assert pairs["nb2svc.kind"] == ("training" if case.startswith("training") else "serving")
    assert len(pairs["nb2svc.notebook.sha256"]) == 63  # a label value's limit; the annotation has all 64
    deployment = docs["deployment.yaml"]
    sha = deployment["metadata"]["annotations"]["nb2svc.notebook.sha256"]
    assert len(sha) == 64 and sha.startswith(pairs["nb2svc.notebook.sha256"])
    for name, doc in docs.items():
        if name != "kustomization.yaml":
            assert doc["metadata"]["labels"] == pairs, name
    assert deployment["spec"]["template"]["metadata"]["labels"] == pairs
    assert deployment["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": pairs["app.kubernetes.io/name"]}


# --- the Deployment ----------------------------------------------------------------------------------------------


def test_the_image_is_pinned_by_digest_when_known_else_by_its_reference(tmp_path: Path) -> None:
    notebook = SAMPLES / "iris_nearest.ipynb"

    def image(info: ImageInfo) -> str:
        return str(container(manifests(write_manifests(info, "iris", tmp_path / info.ref.replace("/", "_"))))["image"])

    assert image(image_info(notebook, digest=DIGEST)) == f"127.0.0.1:5000/team/iris@{DIGEST}"
    assert image(image_info(notebook)) == REF
    no_tag = image_info(notebook, ref="127.0.0.1:5000/iris", digest=DIGEST)  # the port is not a tag
    assert image(no_tag) == f"127.0.0.1:5000/iris@{DIGEST}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_pod_runs_as_uid_10001_unprivileged_on_a_read_only_root(case: str, tmp_path: Path) -> None:
    docs = manifests(CASES[case](tmp_path))
    pod = pod_spec(docs)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    c = container(docs)
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    assert pod["automountServiceAccountToken"] is False


def test_the_runtime_writes_only_into_the_pods_volumes(tmp_path: Path) -> None:
    """Every folder the runtime's environment names lies in a mounted volume, and they match the images."""
    base = (ROOT / "templates" / "Dockerfile.base-cuda").read_text()
    home = re.search(r"--uid 10001 .*--home-dir (\S+)", base)
    assert home, "the image's user and home folder (templates/Dockerfile.base-cuda)"
    runs = re.search(r"NB2SVC_RUNS_DIR=([^\s{]+)", (ROOT / "templates" / "Dockerfile.j2").read_text())
    assert runs, "the images' runs folder (templates/Dockerfile.j2)"
    for case in ("serving", "training"):
        docs = manifests(CASES[case](tmp_path / case))
        c = container(docs)
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
        assert set(mounts.values()) == set(volumes)
        env = effective_env(c)
        assert env["HOME"] == home.group(1)
        named = ["HOME", "TMPDIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLCONFIGDIR"]
        if case == "training":
            named.append("NB2SVC_RUNS_DIR")
            assert env["NB2SVC_RUNS_DIR"] == runs.group(1)
        for var in named:
            assert any(Path(env[var]).is_relative_to(m) for m in mounts), f"{var}={env[var]} is in no volume"
        assert "/tmp" in mounts and volumes[mounts["/tmp"]] == {"name": "tmp", "emptyDir": {}}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_probes_ask_health_on_the_named_port_and_wait_out_a_slow_setup(case: str, tmp_path: Path) -> None:
    docs = manifests(CASES[case](tmp_path))
    c = container(docs)
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert startup >= 600  # setup cells load models
    assert docs["deployment.yaml"]["spec"]["progressDeadlineSeconds"] > startup
    liveness = c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"]
    timeout = 120 if case == "gpu" else 60  # metadata.nb2svc.timeout, else the runtime's default
    assert liveness > timeout  # a replica busy with one long request is not restarted
    (port,) = docs["service.yaml"]["spec"]["ports"]
    assert port == {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    assert docs["service.yaml"]["spec"]["type"] == "ClusterIP"


def test_serving_rolls_out_one_new_replica_at_a_time_and_autoscales_on_cpu(tmp_path: Path) -> None:
    docs = manifests(CASES["serving"](tmp_path))
    spec = docs["deployment.yaml"]["spec"]
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert "replicas" not in spec  # the autoscaler owns the count: a re-apply must not reset it
    hpa = docs["hpa.yaml"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "iris"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 8)
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    # utilisation is measured against the request: an image that declares no CPU still gets one
    assert container(docs)["resources"] == {"requests": {"cpu": "250m"}}
    assert docs["pdb.yaml"]["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "iris"}},
    }
    gpu = manifests(CASES["gpu"](tmp_path / "gpu"))["hpa.yaml"]["spec"]
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (3, 12)


def test_declared_resources_are_requests_and_equal_limits_and_a_gpu_only_where_declared(tmp_path: Path) -> None:
    gpu = manifests(CASES["gpu"](tmp_path / "gpu"))
    assert container(gpu)["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": 1},
    }
    assert pod_spec(gpu)["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    for case in ("serving", "training"):
        text = "".join(f.read_text() for f in CASES[case](tmp_path / case))
        assert "nvidia.com/gpu" not in text and "tolerations" not in text, case
    # --gpu at build time, without the notebook's metadata, is a GPU image too
    built_gpu = image_info(SAMPLES / "iris_nearest.ipynb", gpu=True)
    docs = manifests(write_manifests(built_gpu, "iris", tmp_path / "built"))
    assert container(docs)["resources"]["limits"] == {"nvidia.com/gpu": 1}


@pytest.mark.parametrize(
    ("node", "selector"),
    [
        ("zone=eu1", {"zone": "eu1"}),
        ("worker-1", {"kubernetes.io/hostname": "worker-1"}),
        ("node-7.example.com", {"kubernetes.io/hostname": "node-7.example.com"}),
        ("topology.kubernetes.io/zone=eu-west-1a", {"topology.kubernetes.io/zone": "eu-west-1a"}),
        ("node.labels.zone==eu1", {"zone": "eu1"}),  # as for --target swarm
        ("node.hostname==worker-1", {"kubernetes.io/hostname": "worker-1"}),
    ],
)
def test_node_pins_the_replicas_by_label_or_host_name(node: str, selector: dict[str, str], tmp_path: Path) -> None:
    image = image_info(SAMPLES / "iris_nearest.ipynb")
    assert pod_spec(manifests(write_manifests(image, "iris", tmp_path, node=node)))["nodeSelector"] == selector


def test_no_node_no_node_selector(tmp_path: Path) -> None:
    assert "nodeSelector" not in pod_spec(manifests(CASES["serving"](tmp_path)))


@pytest.mark.parametrize("node", ["zone!=eu1", "bad key=x", "zone=a b", "Worker_1!", "-x=1", "x=" + "a" * 64])
def test_a_node_constraint_kubernetes_cannot_express_is_refused(node: str, tmp_path: Path) -> None:
    with pytest.raises(Nb2svcError) as e:
        write_manifests(image_info(SAMPLES / "iris_nearest.ipynb"), "iris", tmp_path, node=node)
    assert repr(node) in e.value.message and e.value.hint
    assert not tmp_path.joinpath("deployment.yaml").exists()


def test_env_values_stay_data(tmp_path: Path) -> None:
    values = {
        "QUOTES": """it's "quoted" and 'single'""",
        "LINES": "first\nsecond\n  indented\n",
        "REF": "$(HOME)/models and $(UNDEFINED)",  # Kubernetes would expand these
        "DOLLARS": "$$ $x $ end$",
        "YAMLISH": "yes",
        "NULLISH": "null",
        "NUMBER": "0o17",
        "DOC": "---\nkey: [1, {a: b}] # not a comment",
        "UNICODE": "naïve \u2013 ☃",
        "EMPTY": "",
    }
    files = write_manifests(image_info(SAMPLES / "iris_nearest.ipynb"), "iris", tmp_path, env=values)
    c = container(manifests(files))
    env = effective_env(c)
    assert {k: env[k] for k in values} == values
    assert all(isinstance(item["value"], str) for item in c["env"])
    assert [item["name"] for item in c["env"]][-len(values) :] == list(values)  # in the order given


def test_a_setting_replaces_the_runtime_default_of_the_same_name(tmp_path: Path) -> None:
    files = write_manifests(image_info(SAMPLES / "iris_nearest.ipynb"), "iris", tmp_path, env={"HOME": "/tmp/home"})
    names = [item["name"] for item in container(manifests(files))["env"]]
    assert names.count("HOME") == 1 and effective_env(container(manifests(files)))["HOME"] == "/tmp/home"


@pytest.mark.parametrize("name", ["1BAD", "bad key", "", "A=B"])
def test_an_env_name_kubernetes_refuses_is_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(Nb2svcError, match=re.escape(repr(name))):
        write_manifests(image_info(SAMPLES / "iris_nearest.ipynb"), "iris", tmp_path, env={name: "v"})


# --- training -----------------------------------------------------------------------------------------------------


def test_training_keeps_its_runs_on_a_volume_and_runs_one_replica(tmp_path: Path) -> None:
    docs = manifests(CASES["training"](tmp_path))
    assert set(docs) == {"kustomization.yaml", "deployment.yaml", "service.yaml", "pvc.yaml", "pdb.yaml"}
    claim = docs["pvc.yaml"]
    assert claim["metadata"]["name"] == "train-runs"
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}
    c = container(docs)
    (runs,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/var/lib/nb2svc/runs"]
    (volume,) = [v for v in pod_spec(docs)["volumes"] if v["name"] == runs["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": "train-runs"}
    assert effective_env(c)["NB2SVC_RUNS_DIR"] == "/var/lib/nb2svc/runs"
    spec = docs["deployment.yaml"]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # one writer of the volume at a time
    assert "HorizontalPodAutoscaler" in (tmp_path / "kustomization.yaml").read_text()  # the note saying why not
    bigger = write_manifests(image_info(NOTEBOOKS / "training.ipynb"), "train", tmp_path / "big", runs_size="200Gi")
    assert manifests(bigger)["pvc.yaml"]["spec"]["resources"]["requests"]["storage"] == "200Gi"


def test_training_with_more_replicas_than_its_store_allows_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Nb2svcError) as e:
        write_manifests(image_info(NOTEBOOKS / "training.ipynb"), "train", tmp_path, replicas=3)
    assert "train" in e.value.message and "--replicas 1" in (e.value.hint or "")


def test_training_on_a_shared_queue_runs_many_replicas_on_a_read_write_many_volume(tmp_path: Path) -> None:
    docs = manifests(CASES["training_shared"](tmp_path))
    assert set(docs) == {"kustomization.yaml", "deployment.yaml", "service.yaml", "pvc.yaml", "pdb.yaml"}
    assert docs["pvc.yaml"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert effective_env(container(docs))["NB2SVC_QUEUE_URL"] == "redis://train-redis:6379/0"
    spec = docs["deployment.yaml"]["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert "NB2SVC_QUEUE_URL" in (tmp_path / "kustomization.yaml").read_text()  # the note saying what it shares
    for bad, kind in (("http://redis:6379", "training.ipynb"), ("redis://r:6379/0", "serving")):
        notebook = NOTEBOOKS / kind if kind.endswith(".ipynb") else SAMPLES / "iris_nearest.ipynb"
        with pytest.raises(Nb2svcError):
            write_manifests(image_info(notebook), "train", tmp_path / "bad", queue_url=bad)


# --- refusals -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Iris", "iris_nearest", "-iris", "iris-", "1iris", "a" * 64, "", "iris.v1"])
def test_a_name_that_is_not_a_dns_label_is_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(Nb2svcError) as e:
        write_manifests(image_info(SAMPLES / "iris_nearest.ipynb"), name, tmp_path)
    assert repr(name) in e.value.message and "lower-case" in (e.value.hint or "")
    assert not any(tmp_path.iterdir())


def test_the_longest_name_kubernetes_allows_is_accepted(tmp_path: Path) -> None:
    name = "a" + "-b" * 31  # 63
    docs = manifests(write_manifests(image_info(SAMPLES / "iris_nearest.ipynb"), name, tmp_path))
    kubernetes_validate.validate(docs["service.yaml"], KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    "labels",
    [{}, {"org.opencontainers.image.title": "x"}, {"nb2svc.kind": "serving", "nb2svc.base": "1"}],
    ids=["no-labels", "foreign", "nb2svc-base"],
)
def test_an_image_nb2svc_did_not_compile_is_refused(labels: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(Nb2svcError) as e:
        write_manifests(ImageInfo.from_labels("127.0.0.1:5000/library/python:3", labels), "py", tmp_path)
    assert "127.0.0.1:5000/library/python:3" in e.value.message and "nb2svc build" in (e.value.hint or "")


@pytest.mark.parametrize(("option", "value"), [("replicas", 0), ("runs_size", "lots")])
def test_bad_counts_and_sizes_are_refused(option: str, value: Any, tmp_path: Path) -> None:
    notebook = NOTEBOOKS / ("training.ipynb" if option == "runs_size" else "raises.ipynb")
    with pytest.raises(Nb2svcError, match=re.escape(str(value))):
        write_manifests(image_info(notebook), "x", tmp_path, **{option: value})


# --- the images run as the pod spec says --------------------------------------------------------------------------


def _run_as_the_pod_spec_says(client: Any, image: str, docs: Mapping[str, dict[str, Any]]) -> tuple[Any, str]:
    """`docker run` with the Deployment's user, read-only root, dropped capabilities, volumes and env."""
    pod, c = pod_spec(docs), container(docs)
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    fs_group = pod["securityContext"]["fsGroup"]
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # emptyDir (0777) and a fresh claim (fsGroup's): empty folders the pod's user may write. Docker's tmpfs
    # keeps the image folder's mode, so they are given to the user instead.
    uid = pod["securityContext"]["runAsUser"]
    tmpfs = {m["mountPath"]: f"uid={uid},gid={fs_group}" for m in c["volumeMounts"]}
    port = free_port()
    started = client.containers.run(
        image,
        detach=True,
        user=user,
        group_add=[str(fs_group)],
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        tmpfs=tmpfs,
        environment=effective_env(c),
        ports={f"{c['ports'][0]['containerPort']}/tcp": ("127.0.0.1", port)},
        labels={"nb2svc-test": "kubernetes"},
    )
    return started, f"http://127.0.0.1:{port}"


def _healthy(url: str, container_: Any, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        container_.reload()
        if container_.status == "exited":
            break
        time.sleep(0.5)
    pytest.fail(f"never healthy on a read-only root:\n{container_.logs().decode(errors='replace')[-3000:]}")


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["kernel-gateway", "openfaas"])
def test_the_images_work_on_the_read_only_root_the_manifests_ask_for(
    client: Any, containers: list[str], tmp_path: Path, backend: str
) -> None:
    from nb2svc.build import build
    from nb2svc.render import render

    from .conftest import BASE

    refs: list[str] = []
    try:
        for notebook in (SAMPLES / "iris_nearest.ipynb", SAMPLES / "fit_line.ipynb"):
            spec = inspect_notebook(notebook)
            options = BuildOptions(backend=backend, base=BASE)  # type: ignore[arg-type]
            context = render(spec, tmp_path / spec.name, options)
            ref = f"nb2svc-test/k8s-{spec.name.replace('_', '-')}-{backend}:1"
            build(context, ref, client=client)
            refs.append(ref)
            labels = client.images.get(ref).labels
            docs = manifests(write_manifests(ImageInfo.from_labels(ref, labels), "svc", tmp_path / f"k8s-{spec.name}"))
            started, url = _run_as_the_pod_spec_says(client, ref, docs)
            containers.append(started.id)
            _healthy(url, started)
            if spec.kind == "serving":
                r = httpx.post(f"{url}/invoke", json={"features": [6.7, 3.0, 5.2, 2.3]}, timeout=60)
                assert r.status_code == 200 and r.json()["label"] == "virginica", r.text
            else:
                r = httpx.post(f"{url}/runs", params={"wait": 90}, json={"epochs": 20}, timeout=120)
                assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
                art = httpx.get(f"{url}/runs/{r.json()['id']}/artifacts/model.json", timeout=30)
                assert art.status_code == 200, art.text
            assert started.exec_run("id -u").output.strip() == b"10001"
            assert started.exec_run("touch /srv/nb2svc/probe").exit_code != 0  # the root really is read-only
    finally:
        for cid in containers:  # before their images (the fixture's own cleanup then finds them gone)
            with contextlib.suppress(Exception):
                client.containers.get(cid).remove(force=True)
        for ref in refs:
            with contextlib.suppress(Exception):  # only this test's tags; shared layers stay
                client.images.remove(ref)
