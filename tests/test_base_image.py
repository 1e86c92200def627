"""nb2svc.image: the base image built for real on the local Debian image, then run and taken apart.

Needs a Docker daemon and the OS image `nb2svc-test/debian:bookworm` (both from `scripts/docker-setup`);
skipped, with the reason, where either is missing.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from nb2svc.image import BuildError, DockerUnavailable, build_base, connect, host_pip_settings

OS_IMAGE = "nb2svc-test/debian:bookworm"
BASE_TAG = "nb2svc-test/base:cpu"
# Where Dockerfile.base-cuda puts the build-time pip settings (its build stage only).
BUILD_ONLY_PATHS = ("tmp/nb2svc-pip/", "wheelhouse/")
PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.DOTALL)


@pytest.fixture(scope="module")
def client() -> Any:
    try:
        client = connect()
    except DockerUnavailable as exc:
        pytest.skip(f"no Docker daemon ({exc.message}); run scripts/docker-setup")
    try:
        client.images.get(OS_IMAGE)
    except docker.errors.ImageNotFound:
        client.close()
        pytest.skip(f"{OS_IMAGE} is missing; run scripts/docker-setup")
    yield client
    client.close()


@pytest.fixture(scope="module")
def base(client: Any) -> Any:
    lines: list[str] = []
    started = time.monotonic()
    image_id = build_base(client, BASE_TAG, OS_IMAGE, progress=lines.append)
    print(f"built {BASE_TAG} ({image_id}) in {time.monotonic() - started:.1f} s, {len(lines)} log lines")
    image = client.images.get(BASE_TAG)
    assert image.id == image_id
    return image


@pytest.fixture(scope="module")
def layers(base: Any, client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tarfile.TarFile]]:
    """The final image's layers, bottom first, from `docker save`."""
    archive = tmp_path_factory.mktemp("save") / "base.tar"
    with archive.open("wb") as out:
        for chunk in base.save(named=True):
            out.write(chunk)
    with tarfile.open(archive) as outer:
        manifest = json.load(_member(outer, "manifest.json"))
        layers = [tarfile.open(fileobj=_member(outer, name)) for name in manifest[0]["Layers"]]
        yield layers
        for layer in layers:
            layer.close()


def _member(archive: tarfile.TarFile, name: str) -> Any:
    member = archive.extractfile(name)
    assert member is not None, name
    return member


def _files(layer: tarfile.TarFile) -> Iterator[tuple[str, bytes]]:
    for member in layer.getmembers():
        if member.isfile():
            yield member.name.removeprefix("./"), _member(layer, member.name).read()


@pytest.mark.docker
def test_runtime_imports_in_the_venv(client: Any, base: Any) -> None:
    script = (
        "import sys, papermill, kernel_gateway, ipykernel, nbclient, nbformat, starlette, uvicorn, jsonschema, "
        "prometheus_client; print(sys.prefix, sys.version_info >= (3, 11))"
    )
    out = client.containers.run(BASE_TAG, ["python", "-c", script], remove=True)
    assert out.decode().split() == ["/opt/nb2svc/venv", "True"]


@pytest.mark.docker
def test_user_nb2svc_is_uid_10001_with_a_home(client: Any, base: Any) -> None:
    out = client.containers.run(
        BASE_TAG, ["sh", "-c", 'id -u; echo "$HOME"; touch "$HOME/w"'], user="nb2svc", remove=True
    )
    assert out.decode().split() == ["10001", "/home/nb2svc"]


@pytest.mark.docker
def test_labels_and_environment(base: Any) -> None:
    config = base.attrs["Config"]
    assert config["Labels"]["nb2svc.base"] == "1"
    assert config["Labels"]["org.opencontainers.image.title"] == "nb2svc base"
    assert config["Labels"]["org.opencontainers.image.base.name"] == OS_IMAGE
    assert "PATH=/opt/nb2svc/venv/bin:" in "\n".join(config["Env"])
    assert not any("nb2svc-pip" in (entry.get("CreatedBy") or "") for entry in base.history())


@pytest.mark.docker
def test_no_layer_holds_the_build_time_pip_settings(
    client: Any, base: Any, layers: list[tarfile.TarFile], tmp_path: Path
) -> None:
    host_pip_settings(tmp_path)  # what build_base put in the build context
    bundle = (tmp_path / "ca.pem").read_bytes() if (tmp_path / "ca.pem").exists() else b""
    host_certs = [block.strip() for block in PEM_BLOCK.findall(bundle)]

    os_layer_count = len(client.images.get(OS_IMAGE).attrs["RootFS"]["Layers"])
    assert base.attrs["RootFS"]["Layers"][:os_layer_count] == client.images.get(OS_IMAGE).attrs["RootFS"]["Layers"]
    assert len(layers) > os_layer_count, "the build added no layer"
    os_bundle = b""
    for layer in layers[:os_layer_count]:
        for name, data in _files(layer):
            if name == "etc/ssl/certs/ca-certificates.crt":
                os_bundle = data
    # The host's own additions (a proxy's CA): the secret part of the bundle, whatever the OS image ships.
    extra_certs = [cert for cert in host_certs if cert not in os_bundle]

    for index, layer in enumerate(layers):
        added_by_build = index >= os_layer_count
        for name, data in _files(layer):
            assert not name.startswith(BUILD_ONLY_PATHS), f"layer {index} holds {name}"
            assert Path(name).name not in ("pip.conf", "ca.pem"), f"layer {index} holds {name}"
            for cert in extra_certs:
                assert cert not in data, f"layer {index}: {name} holds one of the host's own CA certificates"
            # The OS layer legitimately holds the stock roots (one file per certificate); what the build adds must
            # hold no copy of the bundle that went into its context.
            if added_by_build and bundle:
                assert data.strip() not in (bundle.strip(), host_certs[0]), f"layer {index}: {name} is the CA"


@pytest.mark.docker
def test_a_failing_step_is_a_build_error_with_its_log(client: Any) -> None:
    # --no-index keeps pip off the network: the failure is the same on any machine.
    requirements = ["--no-index", "nb2svc-no-such-package"]
    with pytest.raises(BuildError, match=r"failed at 'Step \d+/\d+ : RUN") as caught:
        build_base(client, "nb2svc-test/base:broken", OS_IMAGE, pip_settings=False, requirements=requirements)
    assert any("nb2svc-no-such-package" in line for line in caught.value.log)
    assert len(caught.value.log) <= 30


def test_host_pip_settings_drop_host_paths(tmp_path: Path) -> None:
    ca = tmp_path / "corp-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    environ = {
        **os.environ,
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_CERT": str(ca),
        "PIP_INDEX_URL": "https://pypi.corp.example/simple",
        "PIP_EXTRA_INDEX_URL": "file:///opt/pypi/simple https://mirror.example/simple",
        "PIP_FIND_LINKS": "/opt/wheels",
        "PIP_CONSTRAINT": "/etc/constraints.txt",
        "PIP_TRUSTED_HOST": "pypi.corp.example",
        "PIP_DEFAULT_TIMEOUT": "90",
    }
    host_pip_settings(tmp_path / "pip", environ=environ)
    conf = (tmp_path / "pip" / "pip.conf").read_text()
    assert "index-url = https://pypi.corp.example/simple" in conf
    assert "extra-index-url = https://mirror.example/simple" in conf
    assert "trusted-host = pypi.corp.example" in conf
    assert "timeout = 90" in conf
    assert "file:" not in conf and "/opt/wheels" not in conf and "constraint" not in conf
    assert (tmp_path / "pip" / "ca.pem").read_bytes() == ca.read_bytes()


def test_unreachable_daemon_is_docker_unavailable() -> None:
    with pytest.raises(DockerUnavailable, match=r"unix:///nonexistent\.sock") as caught:
        connect("unix:///nonexistent.sock")
    assert caught.value.exit_code == 3
    assert "docker-setup" in (caught.value.hint or "")
