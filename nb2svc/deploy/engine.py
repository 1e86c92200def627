"""The one interface every cluster engine implements, the values it takes and returns, and its registry.

An engine turns an nb2svc image (:class:`~nb2svc.deploy.labels.ImageInfo`) into a named deployment that
answers at one URL, and operates it: update (a rolling one), rollback, scale, park, destroy, list.
Engines are registered by name, papermill style, so a new engine is a new module::

    register("swarm", SwarmEngine)
    engine("swarm").deploy("iris", image, DeployOptions(replicas=2))
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ExternalError, Nb2svcError
from .labels import ImageInfo

State = Literal["running", "updating", "parked", "failed"]
Progress = Callable[[str], None]

# A DNS label: what Swarm, Kubernetes and a URL's host part all accept as a service's name.
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class DeployError(Nb2svcError):
    """A deployment cannot be made or changed as asked (exit 1: the image, name or options are wrong)."""


class UnknownDeployment(DeployError):
    def __init__(self, name: str, engine: str, hint: str = "`nb2svc deployments` lists the deployments") -> None:
        super().__init__(f"no deployment {name!r} on {engine}", hint)


class RolledBack(DeployError):
    """A new version never became healthy; the engine went back to the one before, which kept serving."""


class PlacementError(DeployError):
    """No node meets the deployment's placement constraint or its resources."""


class EngineUnavailable(ExternalError):
    """The engine's control plane cannot be reached or is not set up (exit 3)."""


@dataclass(frozen=True)
class DeployOptions:
    """What `deploy` may set besides the image; ``None`` keeps a deployment's current value."""

    replicas: int | None = None  # a new deployment: 1
    node: str | None = None  # strict placement: "zone=eu1" (a node label) or a host name
    env: Mapping[str, str] = field(default_factory=dict)  # added to (or replacing) the deployment's own
    publish: str | None = None  # where an engine's own load balancer listens: "HOST:PORT" or "PORT"
    with_redis: bool = False  # training: run Redis beside the replicas as their shared queue (SPEC §7)


@dataclass(frozen=True)
class Deployment:
    """A deployment as its engine reports it."""

    name: str
    engine: str
    image: str
    url: str | None
    replicas: int  # desired
    running: int  # healthy, serving
    state: State
    notebook: str | None = None
    kind: str | None = None
    commit: str | None = None
    previous: str | None = None  # the image `rollback` goes back to
    redis: tuple[str, int, int] | None = None  # `--with-redis`: (its service, running, desired)
    runs_volume: str | None = None  # the volume every training replica mounts at its runs folder

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "engine": self.engine,
            "url": self.url,
            "image": self.image,
            "replicas": self.replicas,
            "running": self.running,
            "state": self.state,
            "notebook": self.notebook,
            "kind": self.kind,
            "commit": self.commit,
            "previous": self.previous,
            "redis": {"service": self.redis[0], "running": self.redis[1], "replicas": self.redis[2]}
            if self.redis
            else None,
            "runs_volume": self.runs_volume,
        }


def no_progress(_line: str) -> None:  # the default progress: say nothing
    pass


class Engine(ABC):
    """A cluster engine. Every method names the deployment; an unknown name raises :class:`UnknownDeployment`."""

    name: str

    @abstractmethod
    def deploy(
        self, name: str, image: ImageInfo | None, options: DeployOptions, progress: Progress = no_progress
    ) -> Deployment:
        """Create ``name``, or roll it to ``image``, or (``image`` None) resume it / apply ``options``.

        Waits until the deployment has converged; a version that never becomes healthy is rolled back
        and raises :class:`RolledBack` naming the cause.
        """

    @abstractmethod
    def rollback(self, name: str, progress: Progress = no_progress) -> Deployment:
        """Roll ``name`` back to the version before the current one."""

    @abstractmethod
    def scale(self, name: str, replicas: int, progress: Progress = no_progress) -> Deployment: ...

    @abstractmethod
    def park(self, name: str, progress: Progress = no_progress) -> Deployment:
        """No replicas, everything else kept: `deploy` with no image brings it back."""

    @abstractmethod
    def destroy(self, name: str, progress: Progress = no_progress) -> None:
        """Remove the deployment and everything the engine made for it."""

    @abstractmethod
    def get(self, name: str) -> Deployment: ...

    @abstractmethod
    def list(self) -> list[Deployment]: ...


_ENGINES: dict[str, type[Engine]] = {}


def register(name: str, cls: type[Engine]) -> None:
    _ENGINES[name] = cls


def engine(name: str) -> Engine:
    """A new instance of the engine registered as ``name`` (its settings from the environment)."""
    if name not in _ENGINES:  # the built-in adapters register themselves; imported on first use (docker SDK)
        importlib.import_module(f"{__package__}.swarm")

    try:
        return _ENGINES[name]()
    except KeyError:
        raise Nb2svcError(f"no deploy engine {name!r}", f"engines: {', '.join(sorted(_ENGINES))}") from None


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise DeployError(
            f"deployment name {name!r} is not a DNS label",
            "use lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit",
        )
    return name


def check_image(image: ImageInfo) -> ImageInfo:
    if not image.is_nb2svc:
        raise DeployError(
            f"{image.ref} is not an nb2svc function image (it has no nb2svc.kind label)",
            "build one with `nb2svc build NB -t REF --push`",
        )
    return image
