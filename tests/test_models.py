"""`nb2svc models` for real: small nb2svc images (serving, training, one asking for a GPU) and a foreign one,
pushed under a fresh prefix of the registry on 127.0.0.1:5000, then listed through the registry's API with
the local copies removed first, so a pull would show."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from nb2svc import inspect_notebook
from nb2svc.build import build, push
from nb2svc.deploy.catalog import NotInRegistry, list_models, read_image
from nb2svc.registry import Registry
from nb2svc.render import BuildOptions, render

from .conftest import BASE, OS_IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REGISTRY = "127.0.0.1:5000"
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
CARD = {"task": "classification", "owner": "team-a", "metrics": {"accuracy": 0.93}}

# name → (cells: (tags, source), metadata.nb2svc)
NOTEBOOKS: dict[str, tuple[list[tuple[str, str]], dict[str, Any]]] = {
    "iris": (
        [
            ("parameters", "features: list[float] = [5.1, 3.5]   # required\nk: int = 3"),
            ("", "best = 'setosa' if sum(features) < k * 3 else 'virginica'"),
            ("outputs", "label: str = best\nscore: float = 1.0"),
        ],
        {"cpu": "500m", "memory": "256Mi", "card": CARD},
    ),
    "train": (
        [
            ("parameters", "epochs: int = 1\nlr: float = 0.1"),
            ("outputs", "loss: float = lr / epochs"),
        ],
        {"kind": "training", "timeout": 600, "card": {"framework": "none"}},
    ),
    "gpu": (
        [("parameters", "x: float = 1.0"), ("outputs", "y: float = x * 2")],
        {"gpu": True},
    ),
}


@dataclass
class Pushed:
    prefix: str  # {REGISTRY}/nb2svc-models-…
    commit: str
    refs: list[str] = field(default_factory=list)  # every tag pushed, the foreign one included

    @property
    def index_repo(self) -> str:
        """Beside the prefix, not under it: ``…-index/multi`` holds a manifest list (a multi-platform image)."""
        return f"{self.prefix}-index/multi"


def _put_index(repository: str, tag: str, platforms: dict[str, str]) -> str:
    """A Docker manifest list at ``repository:tag``, one entry per ``architecture: tag`` (in that order)."""
    host, _, name = repository.partition("/")
    accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    entries = []
    for arch, of in platforms.items():
        got = httpx.get(f"http://{host}/v2/{name}/manifests/{of}", headers=accept, timeout=30)
        got.raise_for_status()
        entries.append(
            {
                "mediaType": got.headers["Content-Type"],
                "size": len(got.content),
                "digest": got.headers["Docker-Content-Digest"],
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    media_type = "application/vnd.docker.distribution.manifest.list.v2+json"
    body = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    put = httpx.put(
        f"http://{host}/v2/{name}/manifests/{tag}", json=body, headers={"Content-Type": media_type}, timeout=30
    )
    assert put.status_code == 201, put.text
    return put.headers["Docker-Content-Digest"]


def _write(repo: Path, name: str) -> Path:
    cells, meta = NOTEBOOKS[name]
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["nb2svc"] = meta
    nb.cells = [new_code_cell(src, metadata={"tags": [tags]} if tags else {}) for tags, src in cells]
    path = repo / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def _absent(client: Any, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return True
    return False


@pytest.fixture(scope="module")
def pushed(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    """iris:v1 and iris:latest (one image), train:v1, gpu:v1 and the foreign debian:bookworm, pushed;
    none of them left in the local image store."""
    repo = tmp_path_factory.mktemp("catalog")
    subprocess.run([*GIT, "init", "-q", str(repo)], check=True)
    paths = {name: _write(repo, name) for name in NOTEBOOKS}
    subprocess.run([*GIT, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-qm", "notebooks"], check=True)
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    out = Pushed(f"{REGISTRY}/nb2svc-models-{uuid.uuid4().hex[:8]}", commit)
    try:
        for name, path in paths.items():
            ref = f"{out.prefix}/{name}:v1"
            spec = inspect_notebook(path)
            # base= the CPU test base: gpu: true would otherwise pick the CUDA base, which is not here
            context = render(spec, repo / f"ctx-{name}", BuildOptions(backend="openfaas", base=BASE), ref)
            build(context, ref, client=client)
            push(ref, client=client)
            out.refs.append(ref)
        client.images.get(f"{out.prefix}/iris:v1").tag(f"{out.prefix}/iris", "latest")
        push(f"{out.prefix}/iris:latest", client=client)
        out.refs.append(f"{out.prefix}/iris:latest")
        client.images.get(OS_IMAGE).tag(f"{out.prefix}/debian", "bookworm")
        push(f"{out.prefix}/debian:bookworm", client=client)
        out.refs.append(f"{out.prefix}/debian:bookworm")
        for name, tag in (("train", "arm64"), ("iris", "amd64")):  # the index's images, in its repository
            client.images.get(f"{out.prefix}/{name}:v1").tag(out.index_repo, tag)
            push(f"{out.index_repo}:{tag}", client=client)
            out.refs.append(f"{out.index_repo}:{tag}")
        _put_index(out.index_repo, "v1", {"arm64": "arm64", "amd64": "amd64"})
        for ref in out.refs:  # untag only what this fixture made (the Debian image keeps its own tag)
            client.images.remove(ref)
        yield out
    finally:
        for ref in out.refs:
            if not _absent(client, ref):
                client.images.remove(ref, force=True)


def _models(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nb2svc.cli", "models", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_models_lists_every_tag_with_what_its_labels_declare_and_pulls_nothing(client: Any, pushed: Pushed) -> None:
    local_before = {i.id for i in client.images.list()}
    listed = _models(pushed.prefix, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {f"{r['repository'].rsplit('/', 1)[1]}:{r['tag']}": r for r in json.loads(listed.stdout)}
    assert set(rows) == {"iris:v1", "iris:latest", "train:v1", "gpu:v1", "debian:bookworm"}

    iris = rows["iris:v1"]
    assert iris["ref"] == f"{pushed.prefix}/iris:v1" and iris["digest"].startswith("sha256:")
    assert (iris["nb2svc"], iris["kind"], iris["backend"]) == (True, "serving", "openfaas")
    assert [(p["name"], p["type"], p["required"]) for p in iris["parameters"]] == [
        ("features", "list[float]", True),
        ("k", "int", False),
    ]
    assert [(o["name"], o["type"]) for o in iris["outputs"]] == [("label", "str"), ("score", "float")]
    assert iris["resources"] == {"cpu": "500m", "memory": "256Mi", "gpu": False, "timeout": None}
    assert iris["card"] == CARD
    assert iris["commit"] == pushed.commit
    assert iris["notebook"] == "iris.ipynb" and len(iris["notebook_sha256"]) == 64
    assert rows["iris:latest"]["digest"] == iris["digest"]

    train = rows["train:v1"]
    assert train["kind"] == "training" and train["resources"]["timeout"] == 600
    assert [p["name"] for p in train["parameters"]] == ["epochs", "lr"] and train["card"] == {"framework": "none"}
    assert rows["gpu:v1"]["resources"]["gpu"] is True and rows["gpu:v1"]["card"] == {}
    foreign = rows["debian:bookworm"]
    assert foreign["nb2svc"] is False and foreign["kind"] is None and "not nb2svc" in foreign["note"]

    table = _models(pushed.prefix)  # the human table, as piped: 160 columns
    assert table.returncode == 0, table.stderr
    for text in (
        "iris:v1",
        "iris:latest",
        "features: list[float]",
        "label: str",
        "cpu 500m",
        "memory 256Mi",
        "timeout 600s",
        "owner: team-a",
        'metrics: {"accuracy": 0.93}',
        pushed.commit[:12],
        "not nb2svc",
    ):
        assert text in table.stdout, (text, table.stdout)

    assert all(_absent(client, ref) for ref in pushed.refs)  # nothing was pulled
    assert {i.id for i in client.images.list()} <= local_before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--kind", "training"], {"train:v1"}),
        (["--kind", "serving"], {"iris:v1", "iris:latest", "gpu:v1"}),
        (["--param", "k"], {"iris:v1", "iris:latest"}),
        (["--param", "x", "--gpu"], {"gpu:v1"}),
        (["--gpu"], {"gpu:v1"}),
        (["--no-gpu"], {"iris:v1", "iris:latest", "train:v1"}),
        (["--param", "nope"], set()),
    ],
)
def test_filters_keep_the_nb2svc_images_that_meet_them(pushed: Pushed, args: list[str], expected: set[str]) -> None:
    got = list_models(
        pushed.prefix,
        kind=args[args.index("--kind") + 1] if "--kind" in args else None,
        param=args[args.index("--param") + 1] if "--param" in args else None,
        gpu=True if "--gpu" in args else False if "--no-gpu" in args else None,
    )
    assert {f"{r.repository.rsplit('/', 1)[1]}:{r.tag}" for r in got} == expected
    if args == ["--kind", "training"]:  # and through the CLI
        cli = _models(pushed.prefix, *args, "--json")
        assert [r["tag"] for r in json.loads(cli.stdout)] == ["v1"], cli.stderr


@dataclass(frozen=True)
class _Counting(Registry):
    """The registry client, keeping the path of every blob it fetches."""

    blobs: list[str] = field(default_factory=list, compare=False)

    def _send(self, method: str, url: str, headers: dict[str, str], kw: dict[str, Any]) -> Any:
        if "/blobs/" in url:
            self.blobs.append(url.rsplit("/blobs/", 1)[1])
        return super()._send(method, url, headers, kw)


def test_one_config_read_per_image_and_no_layer(pushed: Pushed) -> None:
    registry = _Counting(REGISTRY)
    rows = list_models(pushed.prefix, registry=registry)
    assert len(rows) == 5
    assert len(registry.blobs) == len(set(registry.blobs)) == 4  # iris:v1 and iris:latest: one config
    info = read_image(f"{pushed.prefix}/iris:v1")
    assert info.card == CARD
    assert info.digest == next(r.digest for r in rows if r.ref == f"{pushed.prefix}/iris:v1")


def test_a_multi_platform_image_is_read_for_linux_amd64_and_keeps_the_index_digest(pushed: Pushed) -> None:
    info = read_image(f"{pushed.index_repo}:v1")  # arm64 (training) is listed first, amd64 (serving) second
    assert (info.kind, info.card) == ("serving", CARD)
    amd64 = read_image(f"{pushed.index_repo}:amd64")
    assert info.digest != amd64.digest and info.digest == _head(f"{pushed.index_repo}:v1")
    assert {(r.tag, r.kind) for r in list_models(pushed.index_repo)} == {
        ("amd64", "serving"),
        ("arm64", "training"),
        ("v1", "serving"),
    }


def _head(ref: str) -> str:
    host, _, rest = ref.partition("/")
    name, _, tag = rest.rpartition(":")
    accept = "application/vnd.docker.distribution.manifest.list.v2+json"
    r = httpx.head(f"http://{host}/v2/{name}/manifests/{tag}", headers={"Accept": accept}, timeout=30)
    return r.headers["Docker-Content-Digest"]


def test_the_catalog_is_read_page_by_page(pushed: Pushed) -> None:
    registry = Registry(REGISTRY)
    whole = registry.catalog()
    assert registry.catalog(page=2) == whole  # the registry's Link header, followed to the end
    assert {f"{pushed.prefix}/iris", f"{pushed.index_repo}"} <= {f"{REGISTRY}/{name}" for name in whole}


def test_a_prefix_is_whole_path_components_and_one_repository_works_too(pushed: Pushed) -> None:
    assert list_models(pushed.prefix[:-2]) == []  # nb2svc-models-1234ab is not under nb2svc-models-1234
    assert {r.tag for r in list_models(f"{pushed.prefix}/iris")} == {"v1", "latest"}
    assert read_image(f"{pushed.prefix}/iris").kind == "serving"  # :latest


def test_a_missing_image_says_so_with_exit_1_and_a_registry_down_is_exit_3(pushed: Pushed) -> None:
    with pytest.raises(NotInRegistry, match="not in the registry"):
        read_image(f"{pushed.prefix}/iris:nope")
    with pytest.raises(NotInRegistry):
        read_image(f"{pushed.prefix}/nothing-here:v1")
    no_host = _models("team/iris")
    assert no_host.returncode == 1 and "registry host" in no_host.stderr
    down = _models("127.0.0.1:1/team")
    assert down.returncode == 3 and "did not answer" in down.stderr, down.stderr
    empty = _models(f"{pushed.prefix}/nothing-here")
    assert empty.returncode == 0 and "no images at" in empty.stderr


def test_a_registry_that_asks_for_a_login(
    client: Any, pushed: Pushed, locked_registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logged in (docker's config.json): listed; logged out: exit 3 and the `docker login` hint."""
    config = tmp_path / "logged-in"
    config.mkdir()
    login = base64.b64encode(b"robot:s3cret").decode()
    (config / "config.json").write_text(json.dumps({"auths": {locked_registry: {"auth": login}}}))
    env = dict(os.environ)
    ref = f"{locked_registry}/team/gpu:v1"
    image = client.images.pull(f"{pushed.prefix}/gpu", tag="v1")  # pulled here, on purpose, to copy it
    try:
        image.tag(f"{locked_registry}/team/gpu", "v1")
        monkeypatch.setenv("DOCKER_CONFIG", str(config))
        logged_in = docker.from_env()  # reads the login, as the CLI's client does
        push(ref, client=logged_in)
        logged_in.close()
        monkeypatch.delenv("DOCKER_CONFIG")

        ok = _models(locked_registry, "--json", env={**env, "DOCKER_CONFIG": str(config)})
        assert ok.returncode == 0, ok.stderr
        [row] = json.loads(ok.stdout)
        assert (row["ref"], row["kind"], row["resources"]["gpu"]) == (ref, "serving", True)

        out = _models(f"{locked_registry}/team", env={**env, "DOCKER_CONFIG": str(tmp_path / "logged-out")})
        assert out.returncode == 3, out.stderr
        assert f"registry {locked_registry} refused" in out.stderr
        assert f"docker login {locked_registry}" in out.stderr
    finally:
        for r in (ref, f"{pushed.prefix}/gpu:v1"):
            if not _absent(client, r):
                client.images.remove(r, force=True)
