"""Registry discovery: what the images in a registry declare, read from their config blobs without a pull.

An image's labels live in its config blob, which the registry serves like any blob: a manifest GET (an
index or manifest list first picks linux/amd64, or its first image) and a blob GET per image read them, with
no layer fetched. :func:`read_image` reads one reference; :func:`list_models` reads every tag of every
repository at a location:

- ``REGISTRY`` (``127.0.0.1:5000``): every repository the registry's catalog (``/v2/_catalog``) lists;
- ``REGISTRY/PATH`` (``127.0.0.1:5000/team``): the repository ``team`` and every repository under ``team/``
  (``team/iris``, ``team/a/b``), not ``team-x``. A registry that does not list its repositories (Docker Hub,
  GHCR) still answers for ``PATH`` as one repository.

Each tag is one :class:`ModelRow`. An image that is not nb2svc's (no ``nb2svc.kind`` label, or an nb2svc
base image) is listed too, with ``nb2svc`` false and a note saying what it is; a filter (kind, parameter,
gpu) matches nb2svc images only. Tags of one image (one config digest) read its config once.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import Nb2svcError, RegistryError
from ..registry import Manifest, Registry
from .labels import Declared, ImageInfo, ImageResources

WORKERS = 8  # registry requests in flight at once


class CatalogError(Nb2svcError):
    """A location or reference that does not name a registry, repository or image."""


class NotInRegistry(CatalogError):
    """The registry has no such repository or tag."""


@dataclass(frozen=True)
class ModelRow:
    """One tag of one repository, with what its image's labels declare."""

    registry: str  # host[:port]
    repository: str
    tag: str
    digest: str  # the tag's manifest digest: ``{registry}/{repository}@{digest}`` pulls exactly this
    nb2svc: bool
    note: str = ""  # what the image is, when it is not an nb2svc function image
    kind: str | None = None
    backend: str | None = None
    parameters: tuple[Declared, ...] = ()
    outputs: tuple[Declared, ...] = ()
    resources: ImageResources = field(default_factory=ImageResources)
    notebook: str | None = None
    notebook_sha256: str | None = None
    commit: str | None = None
    card: Mapping[str, Any] = field(default_factory=dict)  # metadata.nb2svc.card, as written

    @property
    def ref(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"

    @classmethod
    def from_image(cls, registry: str, repository: str, tag: str, info: ImageInfo, note: str = "") -> ModelRow:
        if not info.is_nb2svc:
            base = info.labels.get("nb2svc.base") == "1"
            note = note or ("an nb2svc base image" if base else "not nb2svc (no nb2svc.kind label)")
        return cls(
            registry=registry,
            repository=repository,
            tag=tag,
            digest=info.digest or "",
            nb2svc=info.is_nb2svc,
            note=note,
            kind=info.kind,
            backend=info.backend,
            parameters=info.parameters,
            outputs=info.outputs,
            resources=info.resources,
            notebook=info.notebook,
            notebook_sha256=info.notebook_sha256,
            commit=info.commit,
            card=dict(info.card),
        )

    def matches(self, kind: str | None = None, param: str | None = None, gpu: bool | None = None) -> bool:
        if (kind or param or gpu is not None) and not self.nb2svc:
            return False  # a foreign image declares nothing, so it meets no filter
        return (
            (kind is None or self.kind == kind)
            and (param is None or any(p.name == param for p in self.parameters))
            and (gpu is None or self.resources.gpu == gpu)
        )

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, **dataclasses.asdict(self)}


def split_location(location: str) -> tuple[str, str]:
    """``127.0.0.1:5000/team/iris`` → (``127.0.0.1:5000``, ``team/iris``); the host must be written."""
    location = location.removeprefix("https://").removeprefix("http://").strip("/")
    host, _, path = location.partition("/")
    if not host or not ("." in host or ":" in host or host == "localhost"):
        raise CatalogError(
            f"{location!r} does not start with a registry host",
            "write the registry's host first: 127.0.0.1:5000, registry.example.com/team",
        )
    return host, path


def split_ref(ref: str) -> tuple[str, str, str]:
    """``host:5000/team/iris:v1`` → (host, ``team/iris``, ``v1``); ``…@sha256:…`` → the digest; else ``latest``."""
    host, path = split_location(ref)
    if "@" in path:
        name, _, reference = path.partition("@")
    else:
        name, sep, reference = path.rpartition(":")
        if not sep or "/" in reference:
            name, reference = path, "latest"
    if not name:
        raise CatalogError(f"{ref!r} names no repository", f"write the image as {host}/REPOSITORY:TAG")
    return host, name, reference


def read_image(ref: str, *, registry: Registry | None = None) -> ImageInfo:
    """The labels of ``ref``'s image, read through the registry's API (nothing is pulled)."""
    host, name, reference = split_ref(ref)
    reader = _Reader(registry or Registry(host))
    found = reader.resolve(name, reference)
    if found is None:
        raise NotInRegistry(
            f"{ref} is not in the registry {host}", f"see what {host}/{name} holds: nb2svc models {host}/{name}"
        )
    return reader.info(ref, name, found)[0]


def list_models(
    location: str,
    *,
    kind: str | None = None,
    param: str | None = None,
    gpu: bool | None = None,
    registry: Registry | None = None,
) -> list[ModelRow]:
    """One row per tag at ``location`` (see the module's docstring), those meeting every filter given."""
    host, path = split_location(location)
    reader = _Reader(registry or Registry(host))
    with ThreadPoolExecutor(WORKERS) as pool:
        repositories = _repositories(reader.registry, path)
        tagged = [
            (repo, tag)
            for repo, tags in zip(repositories, pool.map(reader.registry.tags, repositories), strict=True)
            for tag in tags
        ]
        resolved = list(pool.map(lambda rt: reader.resolve(*rt), tagged))
        # each config once, before the rows ask for it (tags of one image share it)
        first = {r.config: (repo, r.config) for (repo, _), r in zip(tagged, resolved, strict=True) if r and r.config}
        list(pool.map(lambda rc: reader.labels(*rc), first.values()))
    rows = []
    for (repo, tag), r in zip(tagged, resolved, strict=True):
        if r is None:
            continue  # deleted since the tags were listed
        info, note = reader.info(f"{host}/{repo}:{tag}", repo, r)
        rows.append(ModelRow.from_image(host, repo, tag, info, note))
    return [row for row in rows if row.matches(kind, param, gpu)]


def _repositories(registry: Registry, path: str) -> list[str]:
    if not path:
        return registry.catalog()
    try:
        listed = registry.catalog()
    except RegistryError:
        # Docker Hub, GHCR and others keep their catalog to themselves: PATH is then the one repository
        # (its own tags call says why, if the registry refuses that too: a login, say)
        return [path]
    return [name for name in listed if name == path or name.startswith(path + "/")]


@dataclass(frozen=True)
class _Resolved:
    digest: str  # of the tag's manifest (an index's own digest, where it is one)
    config: str | None  # the image config's digest; None: the manifest has no config to read
    media_type: str


class _Reader:
    """Manifest and config reads against one registry; configs cached by digest (they are content-addressed)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._labels: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str, reference: str) -> _Resolved | None:
        top = self.registry.manifest(name, reference)
        if top is None:
            return None
        image: Manifest | None = top
        if top.is_index:
            chosen = _pick_platform(top.content.get("manifests") or [])
            image = self.registry.manifest(name, chosen) if chosen else None
        config = (image.content.get("config") or {}).get("digest") if image else None
        return _Resolved(top.digest, str(config) if config else None, top.media_type)

    def labels(self, name: str, config: str) -> dict[str, str]:
        with self._lock:
            if config in self._labels:
                return self._labels[config]
        try:
            body = json.loads(self.registry.blob(name, config))
        except ValueError:
            body = {}
        config_section = body.get("config") if isinstance(body, dict) else None
        labels = config_section.get("Labels") if isinstance(config_section, dict) else None
        found = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
        with self._lock:
            self._labels[config] = found
        return found

    def info(self, ref: str, name: str, resolved: _Resolved) -> tuple[ImageInfo, str]:
        """The image's :class:`ImageInfo` and, where its config could not be read, why."""
        if resolved.config is None:
            return ImageInfo.from_labels(ref, {}, resolved.digest), f"no image config ({resolved.media_type})"
        return ImageInfo.from_labels(ref, self.labels(name, resolved.config), resolved.digest), ""


def _pick_platform(manifests: list[dict[str, Any]]) -> str | None:
    """An index's linux/amd64 image, or its first real one (not an attestation's ``unknown/unknown``)."""
    images = [m for m in manifests if isinstance(m, dict) and m.get("digest")]
    for m in images:
        platform = m.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return str(m["digest"])
    real = [m for m in images if (m.get("platform") or {}).get("os") != "unknown"]
    return str((real or images)[0]["digest"]) if images else None
