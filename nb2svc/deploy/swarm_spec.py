"""What a Swarm deployment is, as data: its settings, its versions, the service spec built from them.

A deployment's own record lives in its service's labels (``nb2svc.deploy.*``): the current version
(image, notebook, kind, commit, resources), the one before (what `rollback` goes back to), the URL, the
strict placement asked for, and the replica count to resume a parked deployment with. Everything else
is the service spec itself, which :func:`service_kwargs` builds whole on every change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import docker.types

from .engine import DeployError, PlacementError
from .labels import ImageInfo, ImageResources

PREFIX = "nb2svc.deploy."
NAME_LABEL = PREFIX + "name"
PART_OF = PREFIX + "part-of"  # on what a deployment has besides its service: its Redis, its volumes
RUNS_DIR = "/var/lib/nb2svc/runs"  # NB2SVC_RUNS_DIR in the images (templates/Dockerfile.j2)
_S = 1_000_000_000  # Swarm's durations are nanoseconds


@dataclass(frozen=True)
class SwarmSettings:
    """How deployments run; each from ``NB2SVC_SWARM_<FIELD>`` (upper case, seconds for durations)."""

    health_interval: float = 2.0  # the image's HEALTHCHECK runs every 10 s: too slow to roll an update
    health_timeout: float = 3.0
    health_retries: int = 3
    start_period: float = 60.0  # a notebook's setup (loading a model) may take this long
    monitor: float = 10.0  # a new replica that fails within this is a failed update
    update_delay: float = 0.0
    stop_grace: float = 10.0
    restart_delay: float = 1.0
    timeout: float = 600.0  # how long deploy waits for the service to converge
    placement_wait: float = 3.0  # a task that no node can take for this long is a placement error
    gpu_resource: str = "NVIDIA-GPU"  # the generic resource the nodes advertise their GPUs as
    lb_base: str | None = None  # NB2SVC_LB_BASE: the load balancer's OS image (default: the function's)
    redis_base: str | None = None  # NB2SVC_REDIS_BASE: --with-redis's OS image (default: the function's)
    lb_slots: int = 64

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SwarmSettings:
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f"NB2SVC_{f.name.upper()}" if f.name.endswith("_base") else f"NB2SVC_SWARM_{f.name.upper()}"
            raw = environ.get(key)
            if raw is None or raw == "":
                continue
            kind = type(getattr(cls, f.name)) if getattr(cls, f.name) is not None else str
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise DeployError(f"{key}={raw!r} is not a {kind.__name__}") from None
        return cls(**values)


@dataclass(frozen=True)
class Release:
    """One version of a deployment: the image and what its labels said."""

    image: str  # as given: host/repo:tag
    digest: str | None = None  # the manifest's: every task runs exactly what was pushed
    notebook: str | None = None
    kind: str | None = None
    commit: str | None = None
    resources: ImageResources = field(default_factory=ImageResources)

    @classmethod
    def of(cls, image: ImageInfo) -> Release:
        return cls(image.ref, image.digest, image.notebook, image.kind, image.commit, image.resources)

    def labels(self, prefix: str) -> dict[str, str]:
        r = self.resources
        out = {
            prefix + "image": self.image,
            prefix + "resources": json.dumps(
                {"cpu": r.cpu, "memory": r.memory, "gpu": r.gpu, "timeout": r.timeout}, separators=(",", ":")
            ),
        }
        out.update({prefix + k: v for k, v in (("notebook", self.notebook), ("kind", self.kind)) if v})
        out.update({prefix + k: v for k, v in (("commit", self.commit), ("digest", self.digest)) if v})
        return out

    @property
    def pinned(self) -> str:
        """``host/repo:tag@sha256:…`` where the digest is known."""
        return f"{self.image}@{self.digest}" if self.digest and "@" not in self.image else self.image

    @classmethod
    def from_labels(cls, labels: Mapping[str, str], prefix: str) -> Release | None:
        if prefix + "image" not in labels:
            return None
        try:
            res = json.loads(labels.get(prefix + "resources") or "{}")
        except ValueError:
            res = {}
        return cls(
            image=labels[prefix + "image"],
            digest=labels.get(prefix + "digest"),
            notebook=labels.get(prefix + "notebook"),
            kind=labels.get(prefix + "kind"),
            commit=labels.get(prefix + "commit"),
            resources=ImageResources(res.get("cpu"), res.get("memory"), bool(res.get("gpu")), res.get("timeout")),
        )


@dataclass(frozen=True)
class Plan:
    """Everything a deployment's service is made from."""

    name: str
    release: Release
    replicas: int
    network: str
    url: str
    port: int = 8080
    previous: Release | None = None
    node: str | None = None  # as the user wrote it
    env: Mapping[str, str] = field(default_factory=dict)
    parked_replicas: int | None = None  # what `deploy --name` resumes with
    runs_volume: str | None = None  # training with a queue: the named volume every replica mounts
    redis: str | None = None  # `--with-redis`: the Redis service beside it (swarm_shared)

    @property
    def runs_dir(self) -> str:
        return self.env.get("NB2SVC_RUNS_DIR") or RUNS_DIR

    def labels(self) -> dict[str, str]:
        out = {NAME_LABEL: self.name, PREFIX + "engine": "swarm", PREFIX + "url": self.url}
        out[PREFIX + "port"] = str(self.port)
        out.update(self.release.labels(PREFIX))
        if self.previous:
            out.update(self.previous.labels(PREFIX + "previous."))
        if self.node:
            out[PREFIX + "node"] = self.node
        if self.parked_replicas is not None:
            out[PREFIX + "parked.replicas"] = str(self.parked_replicas)
        if self.runs_volume:
            out[PREFIX + "runs.volume"] = self.runs_volume
        if self.redis:
            out[PREFIX + "redis"] = self.redis
        return out

    @classmethod
    def from_service(cls, attrs: Mapping[str, Any]) -> Plan:
        spec = attrs["Spec"]
        labels = spec.get("Labels") or {}
        release = Release.from_labels(labels, PREFIX)
        assert release is not None  # noqa: S101  # only nb2svc's services are read (NAME_LABEL filter)
        container = spec["TaskTemplate"]["ContainerSpec"]
        parked = labels.get(PREFIX + "parked.replicas")
        return cls(
            name=labels[NAME_LABEL],
            release=release,
            replicas=int(spec.get("Mode", {}).get("Replicated", {}).get("Replicas", 0)),
            network=network_name(labels[NAME_LABEL]),
            url=labels.get(PREFIX + "url", ""),
            port=int(labels.get(PREFIX + "port", "8080")),
            previous=Release.from_labels(labels, PREFIX + "previous."),
            node=labels.get(PREFIX + "node"),
            env=dict(e.partition("=")[::2] for e in container.get("Env") or []),
            parked_replicas=int(parked) if parked else None,
            runs_volume=labels.get(PREFIX + "runs.volume"),
            redis=labels.get(PREFIX + "redis"),
        )


def network_name(name: str) -> str:
    return f"nb2svc-{name}"


def constraint(node: str) -> str:
    """``zone=eu1`` → ``node.labels.zone==eu1``; ``HOST`` → ``node.hostname==HOST``; Swarm's own syntax kept."""
    if "==" in node or "!=" in node:
        return node
    key, sep, value = node.partition("=")
    if sep:
        if not key or not value:
            raise DeployError(f"--node {node!r}: expected LABEL=VALUE or a host name")
        return f"node.labels.{key}=={value}"
    return f"node.hostname=={node}"


def meets(node: Mapping[str, Any], expression: str) -> bool | None:
    """Whether a node (as the API lists it) meets a constraint; None for attributes not checked here."""
    m = re.fullmatch(r"\s*([\w.-]+)\s*(==|!=)\s*(.+?)\s*", expression)
    if not m:
        return None
    attribute, op, value = m.groups()
    if attribute.startswith("node.labels."):
        actual = (node.get("Spec", {}).get("Labels") or {}).get(attribute.removeprefix("node.labels."))
    elif attribute == "node.hostname":
        actual = node.get("Description", {}).get("Hostname")
    elif attribute == "node.role":
        actual = node.get("Spec", {}).get("Role")
    elif attribute == "node.id":
        actual = node.get("ID")
    else:
        return None
    return (actual == value) if op == "==" else (actual != value)


def check_placement(nodes: list[Mapping[str, Any]], node: str) -> None:
    """Raise :class:`PlacementError` when no ready, active node (as the API lists them) meets ``node``."""
    expression = constraint(node)
    ready = [
        n
        for n in nodes
        if n.get("Status", {}).get("State") == "ready" and n.get("Spec", {}).get("Availability") == "active"
    ]
    verdicts = [meets(n, expression) for n in ready]
    if None in verdicts or any(verdicts):
        return  # met, or not something checked here: the scheduler decides (and deploy reports it)
    names = ", ".join(_describe(n) for n in ready) or "none"
    raise PlacementError(
        f"no node meets --node {node!r} ({expression}); ready nodes: {names}",
        "label a node (`docker node update --label-add K=V NODE`) or pick another constraint",
    )


def _describe(node: Mapping[str, Any]) -> str:
    labels = node.get("Spec", {}).get("Labels") or {}
    shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "no labels"
    return f"{node.get('Description', {}).get('Hostname')} ({shown})"


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def memory_bytes(quantity: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", quantity)
    if not m:
        raise DeployError(f"memory {quantity!r} is not a quantity like 512Mi or 2Gi")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def nano_cpus(quantity: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(m)?", quantity)
    if not m:
        raise DeployError(f"cpu {quantity!r} is not a quantity like 500m or 2")
    return int(float(m.group(1)) * (1_000_000 if m.group(2) else _S))


def service_kwargs(plan: Plan, settings: SwarmSettings) -> dict[str, Any]:
    """The keyword arguments of ``client.services.create`` for ``plan``: the whole service spec."""
    res = plan.release.resources
    cpu = nano_cpus(res.cpu) if res.cpu else None
    memory = memory_bytes(res.memory) if res.memory else None
    resources = docker.types.Resources(
        cpu_limit=cpu,
        mem_limit=memory,
        cpu_reservation=cpu,
        mem_reservation=memory,
        generic_resources={settings.gpu_resource: 1} if res.gpu else None,
    )
    return {
        "image": plan.release.pinned,
        "name": plan.name,
        "labels": plan.labels(),
        "container_labels": {NAME_LABEL: plan.name},
        "env": [f"{k}={v}" for k, v in plan.env.items()],
        "mode": docker.types.ServiceMode("replicated", replicas=plan.replicas),
        "networks": [plan.network],
        # training replicas sharing a queue share their runs folder too (one node; see docs/scale-out.md)
        "mounts": [docker.types.Mount(plan.runs_dir, plan.runs_volume, type="volume", labels={PART_OF: plan.name})]
        if plan.runs_volume
        else [],
        # no virtual IP (it needs IPVS): tasks.NAME resolves to every task, the load balancer picks
        "endpoint_spec": docker.types.EndpointSpec(mode="dnsrr"),
        # Test [] keeps the image's own HEALTHCHECK command (GET /health); only its timing is Swarm's
        "healthcheck": docker.types.Healthcheck(
            test=[],
            interval=int(settings.health_interval * _S),
            timeout=int(settings.health_timeout * _S),
            retries=settings.health_retries,
            start_period=int(settings.start_period * _S),
        ),
        "resources": resources,
        "constraints": [constraint(plan.node)] if plan.node else [],
        "restart_policy": docker.types.RestartPolicy(condition="any", delay=int(settings.restart_delay * _S)),
        "stop_grace_period": int(settings.stop_grace * _S),
        # new replicas first, one at a time; one that fails within the monitor window rolls the update back
        "update_config": docker.types.UpdateConfig(
            parallelism=1,
            delay=int(settings.update_delay * _S),
            failure_action="rollback",
            monitor=int(settings.monitor * _S),
            max_failure_ratio=0,
            order="start-first",
        ),
        "rollback_config": docker.types.RollbackConfig(
            parallelism=1, failure_action="pause", monitor=int(settings.monitor * _S), order="start-first"
        ),
    }
