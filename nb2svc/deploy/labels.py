"""What an nb2svc image says about itself in its labels: the one value deploy, Kubernetes and `models` read.

`render.image_labels` writes the labels; :meth:`ImageInfo.from_labels` reads them back, from a local
image's inspect or from a registry's config blob (no pull needed). An image without ``nb2svc.kind``
is not an nb2svc image (:attr:`ImageInfo.is_nb2svc` is false).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Declared:
    """A typed parameter or output as the image declares it."""

    name: str
    type: str  # as written in the notebook: "list[float]", "Literal['a', 'b']"
    required: bool = False
    default: Any = None
    help: str = ""


@dataclass(frozen=True)
class ImageResources:
    cpu: str | None = None  # Kubernetes quantity: "1", "500m"
    memory: str | None = None  # "2Gi"
    gpu: bool = False
    timeout: float | None = None  # seconds per request (serving) or per run (training)


@dataclass(frozen=True)
class ImageInfo:
    ref: str  # as given: host/repo:tag
    labels: Mapping[str, str]
    digest: str | None = None  # the manifest's digest, where read from a registry
    kind: str | None = None  # "serving" | "training"; None: not an nb2svc image
    backend: str | None = None
    notebook: str | None = None  # the notebook's file name
    notebook_sha256: str | None = None
    commit: str | None = None
    resources: ImageResources = field(default_factory=ImageResources)
    parameters: tuple[Declared, ...] = ()
    outputs: tuple[Declared, ...] = ()
    card: Mapping[str, Any] = field(default_factory=dict)
    port: int = 8080

    @property
    def is_nb2svc(self) -> bool:
        return self.kind is not None

    @classmethod
    def from_labels(cls, ref: str, labels: Mapping[str, str] | None, digest: str | None = None) -> ImageInfo:
        labels = dict(labels or {})
        kind = labels.get("nb2svc.kind")
        if kind is None or labels.get("nb2svc.base") == "1":
            return cls(ref=ref, labels=labels, digest=digest)
        res = _json(labels.get("nb2svc.resources"), {})
        resources = ImageResources(
            cpu=res.get("cpu"),
            memory=res.get("memory"),
            gpu=bool(res.get("gpu")) or labels.get("nb2svc.gpu") == "true",
            timeout=res.get("timeout"),
        )
        return cls(
            ref=ref,
            labels=labels,
            digest=digest,
            kind=kind,
            backend=labels.get("nb2svc.backend"),
            notebook=labels.get("nb2svc.notebook"),
            notebook_sha256=labels.get("nb2svc.notebook.sha256"),
            commit=labels.get("nb2svc.git.commit"),
            resources=resources,
            parameters=_declared(labels.get("nb2svc.parameters")),
            outputs=_declared(labels.get("nb2svc.outputs")),
            card=_json(labels.get("nb2svc.card"), {}),
        )


def _json(raw: str | None, default: Any) -> Any:
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except ValueError:
        return default
    return value if isinstance(value, type(default)) else default


def _declared(raw: str | None) -> tuple[Declared, ...]:
    out = []
    for item in _json(raw, []):
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            out.append(
                Declared(
                    name=item["name"],
                    type=str(item.get("type", "")),
                    required=bool(item.get("required")),
                    default=item.get("default"),
                    help=str(item.get("help", "")),
                )
            )
    return tuple(out)
