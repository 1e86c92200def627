"""Stages 4-6: a build context becomes an image (docker SDK), a pushed reference, a running container."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import requests

from .errors import ExternalError, Nb2svcError, RegistryError
from .image import BuildError, DockerUnavailable, build_base, connect, follow_build_log, proxy_build_args
from .render import BuildContext

Progress = Callable[[str], None]
BASE_LABEL = "nb2svc.base"
CONTEXT_LABEL = "nb2svc.context.sha256"


@dataclass(frozen=True)
class ImageRef:
    ref: str  # the tag built, e.g. 127.0.0.1:5000/team/iris:abc123
    id: str
    content_hash: str  # of the context and the base image's id (the image's nb2svc.context.sha256 label)
    cached: bool  # the same context was already built: nothing was rebuilt


def _quiet(_line: str) -> None:
    pass


def resolve_base(
    client: Any, base: str, progress: Progress = _quiet, *, pip_settings: bool = True, wheelhouse: Path | None = None
) -> tuple[str, str]:
    """(name, id) of ``base`` itself if it is an nb2svc base image; else of the nb2svc base built on it."""
    try:
        image = client.images.get(base)
    except docker.errors.ImageNotFound:
        raise Nb2svcError(
            f"base image {base!r} is not here", "build it with `nb2svc base build`, or pull it, then build again"
        ) from None
    if (image.labels or {}).get(BASE_LABEL) == "1":
        return base, str(image.id)
    derived = "nb2svc/base:on-" + re.sub(r"[^a-z0-9_.-]+", "-", base.lower()).strip("-.")[:100]
    progress(f"{base} is not an nb2svc base: building {derived} on it first")
    image_id = build_base(client, derived, base, pip_settings=pip_settings, wheelhouse=wheelhouse, progress=progress)
    return derived, image_id


def build(
    context: BuildContext,
    tag: str,
    *,
    client: Any = None,
    no_cache: bool = False,
    build_args: Mapping[str, str] | None = None,
    progress: Progress = _quiet,
) -> ImageRef:
    """Build the context as ``tag``; a context already built (same content hash) is only re-tagged."""
    client = client or connect()
    options = context.options
    base, base_id = resolve_base(
        client, options.base_image, progress, pip_settings=options.pip_settings, wheelhouse=options.wheelhouse
    )
    # The context and the base it is built on: a rebuilt base (new packages, a new CUDA) is a new image.
    content_hash = hashlib.sha256(f"{context.content_hash}\0{base_id}".encode()).hexdigest()
    if not no_cache:
        try:  # the common no-op: the tag already names this content (one lookup, not a search)
            current = client.images.get(tag)
            if (current.labels or {}).get(CONTEXT_LABEL) == content_hash:
                progress(f"unchanged: {tag} is {current.short_id}, nothing to build")
                return ImageRef(tag, current.id, content_hash, cached=True)
        except docker.errors.ImageNotFound:
            pass
        done = client.images.list(filters={"label": f"{CONTEXT_LABEL}={content_hash}"})
        if done:
            done[0].tag(tag)
            progress(f"unchanged since {done[0].short_id}: tagged {tag}, nothing to build")
            return ImageRef(tag, done[0].id, content_hash, cached=True)
    try:
        chunks = client.api.build(
            path=str(context.path),
            tag=tag,
            decode=True,
            buildargs={"BASE_IMAGE": base, **proxy_build_args(), **(build_args or {})},
            # the rest are in the Dockerfile's one LABEL step
            labels={**{k: context.labels[k] for k in context.build_labels}, CONTEXT_LABEL: content_hash},
            network_mode="host",  # the deps stage's pip reaches what the host's pip reaches
            rm=True,
            forcerm=True,
            nocache=no_cache,
            pull=False,
        )
        image_id = follow_build_log(chunks, f"building {tag} from {context.spec.notebook.name}", progress)
    except docker.errors.APIError as e:
        raise BuildError(f"building {tag} failed: {e.explanation or e}") from e
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as e:
        raise DockerUnavailable(str(e)) from e
    return ImageRef(tag, image_id or str(client.images.get(tag).id), content_hash, cached=False)


def push(ref: str, *, client: Any = None, progress: Progress = _quiet) -> str:
    """Push ``ref``; returns ``repository@sha256:…``. Credentials come from the usual Docker config."""
    client = client or connect()
    repository, tag = _split(ref)
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        raise Nb2svcError(f"no image {ref!r} here to push", "build it first: nb2svc build NB -t REF") from None
    digest = None
    sizes: dict[str, int] = {}
    try:
        for chunk in client.api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in chunk or "errorDetail" in chunk:
                raise RegistryError(f"pushing {ref} failed: {chunk.get('error', chunk.get('errorDetail'))}")
            aux = chunk.get("aux")
            if isinstance(aux, Mapping) and aux.get("Digest"):
                digest = str(aux["Digest"])
            status, layer = chunk.get("status"), chunk.get("id")
            detail = chunk.get("progressDetail") or {}
            if layer and detail.get("total"):
                sizes[layer] = int(detail["total"])
            if layer and (status in {"Pushed", "Layer already exists"} or str(status).startswith("Mounted")):
                size = f" ({sizes[layer] / 1e6:.1f} MB)" if layer in sizes else ""
                progress(f"{layer}: {status}{size}")
    except (docker.errors.APIError, requests.exceptions.ConnectionError) as e:
        raise RegistryError(f"pushing {ref} failed: {e}", "is the registry running and reachable?") from e
    if digest is None:
        raise RegistryError(f"pushing {ref} gave no digest")
    return f"{repository}@{digest}"


def pull(ref: str, *, client: Any = None) -> str:
    client = client or connect()
    repository, tag = _split(ref)
    try:
        return str(client.images.pull(repository, tag=tag).id)
    except (docker.errors.APIError, requests.exceptions.ConnectionError) as e:
        raise RegistryError(f"pulling {ref} failed: {e}") from e


@dataclass(frozen=True)
class Running:
    url: str
    container_id: str


def run(
    ref: str,
    *,
    port: int = 8080,
    gpus: bool | None = None,
    env: Mapping[str, str] | None = None,
    client: Any = None,
    timeout: float = 120.0,
    remove: bool = False,
    volumes: Mapping[str, str] | None = None,
) -> Running:
    """Start ``ref`` with its port published on 127.0.0.1, wait for ``/health`` to answer 200.

    ``gpus=None`` gives the container every GPU when the image's ``nb2svc.gpu`` label asks for one.
    ``remove`` has Docker remove the container when it stops. ``volumes`` maps host folders (or volume
    names) to paths in the container, e.g. a folder for training runs at /var/lib/nb2svc/runs.
    A container that exits, or whose ``/health`` says its setup failed, is removed and reported with
    its log's tail; one still unhealthy at ``timeout`` is left running for ``docker logs``.
    """
    client = client or connect()
    env = dict(env or {})
    inner = int(env.get("PORT", "8080"))  # the image listens on $PORT
    if gpus is None:
        try:
            gpus = (client.images.get(ref).labels or {}).get("nb2svc.gpu") == "true"
        except docker.errors.ImageNotFound:
            gpus = False  # pulled by create below
    devices = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpus else None
    container = None
    try:
        container = client.containers.create(
            ref,
            ports={f"{inner}/tcp": ("127.0.0.1", port)},
            environment=env,
            device_requests=devices,
            auto_remove=remove,
            volumes={src: {"bind": dst, "mode": "rw"} for src, dst in (volumes or {}).items()},
        )
        container.start()
    except docker.errors.ImageNotFound:
        raise Nb2svcError(f"no image {ref!r}", "build or pull it first") from None
    except docker.errors.APIError as e:
        if container is not None:
            container.remove(force=True)
        hint = "is the NVIDIA container toolkit installed? (--no-gpus runs it on the CPU)" if gpus else None
        raise ExternalError(f"starting {ref} failed: {e.explanation or e}", hint) from e
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    hint = "fix the notebook, or run it with `nb2svc serve` to see why"
    while time.monotonic() < deadline:
        try:
            container.reload()
        except docker.errors.NotFound:  # exited, and removed by Docker (remove=True)
            raise Nb2svcError(f"{ref} exited before it was healthy", "run it without --rm to see its log") from None
        failed = None
        if container.status == "exited":
            failed = "exited before it was healthy"
        else:
            try:
                health = httpx.get(f"{url}/health", timeout=2)
                if health.status_code == 200:
                    return Running(url, container.id)
                if health.json().get("status") == "failed":
                    error = health.json().get("error") or {}
                    failed = f"failed its setup: {error.get('message', '')}"
                    hint = error.get("hint") or hint
            except (httpx.HTTPError, ValueError):
                pass
        if failed:
            try:
                logs = container.logs(tail=30).decode(errors="replace").rstrip()
                container.remove(force=True)
            except docker.errors.NotFound:
                logs = "(its log went with it: run it without --rm to keep it)"
            raise Nb2svcError(f"{ref} {failed}\n{logs}", hint)
        time.sleep(0.25)
    raise ExternalError(f"{ref} was not healthy within {timeout:g} s", f"see `docker logs {container.short_id}`")


def _split(ref: str) -> tuple[str, str]:
    """``host:5000/a/b:tag`` → (``host:5000/a/b``, ``tag``); no tag means ``latest``."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return name, tag
