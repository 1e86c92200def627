"""One address for all of a Swarm deployment's replicas: HAProxy in a container of its own.

Why not Swarm's own: its routing mesh and virtual IPs need IPVS, which some kernels lack (this project's
machines among them), and a Swarm service cannot publish a port on one address (127.0.0.1) only. So each
deployment gets a plain container, ``nb2svc-lb-NAME``, attached to the deployment's overlay network with
its port published on the manager where `deploy` ran. HAProxy finds the replicas through Docker's embedded
DNS (``tasks.NAME``; the service uses ``endpoint_mode=dnsrr``) and health-checks their ``/health``, so a
replica that is starting or whose setup failed gets no request. The image is built here, from Debian's (or
Ubuntu's) ``haproxy`` package on the OS image the function's base came from (templates/lb/).
"""

from __future__ import annotations

import hashlib
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import docker.errors

from .. import __version__
from ..image import BuildError, follow_build_log, proxy_build_args
from .engine import DeployError, EngineUnavailable, Progress

NAME_LABEL = "nb2svc.deploy.name"
ROLE_LABEL = "nb2svc.deploy.role"
FALLBACK_BASE = "debian:bookworm-slim"
_BASE_NAME = "org.opencontainers.image.base.name"


@dataclass(frozen=True)
class Balancer:
    """Where the load balancer listens, and what it forwards to."""

    name: str  # the deployment's
    service: str  # the Swarm service whose tasks it balances
    network: str
    port: int  # the replicas' port
    host: str = "127.0.0.1"  # published on the manager's address
    host_port: int | None = None  # None: a free port
    slots: int = 64  # most replicas it can see (HAProxy's server-template)
    timeout: str = "300s"  # per request
    maxconn: int = 4096


def container_name(name: str) -> str:
    return f"nb2svc-lb-{name}"


def default_base(client: Any, labels: Mapping[str, str]) -> str:
    """The OS image the function's base was built on (the ``base.name`` labels, followed), if it is here.

    ``labels`` are the function image's: it names its nb2svc base, whose own label names the OS image.
    """
    ref = labels.get(_BASE_NAME)
    for _ in range(4):
        if not ref:
            break
        try:
            parent = client.images.get(ref).labels or {}
        except docker.errors.ImageNotFound:
            break
        if parent.get("nb2svc.base") != "1" and "nb2svc.kind" not in parent:
            return ref
        ref = parent.get(_BASE_NAME) if parent.get(_BASE_NAME) != ref else None
    return FALLBACK_BASE


def image(client: Any, base: str, progress: Progress, kind: str = "lb", setting: str = "NB2SVC_LB_BASE") -> str:
    """``nb2svc/KIND:<hash>`` built from templates/KIND/ on ``base`` unless it is here already.

    The load balancer's, and the Redis a training deployment may run beside it (:mod:`.swarm_shared`).
    ``setting`` names what chooses the base, for the hint when apt fails.
    """
    package = resources.files(f"nb2svc.templates.{kind}")
    files = sorted((f for f in package.iterdir() if f.is_file() and not f.name.startswith("__")), key=lambda f: f.name)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    try:
        digest.update(str(client.images.get(base).id).encode())
    except docker.errors.ImageNotFound:
        digest.update(base.encode())  # pulled by the build
    tag = f"nb2svc/{kind}:{digest.hexdigest()[:12]}"
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    what = "the load balancer" if kind == "lb" else f"nb2svc's {kind}"
    with tempfile.TemporaryDirectory(prefix=f"nb2svc-{kind}-") as tmp:
        for f in files:
            (Path(tmp) / f.name).write_bytes(f.read_bytes())
        try:
            chunks = client.api.build(
                path=tmp,
                tag=tag,
                decode=True,
                buildargs={"BASE_IMAGE": base, **proxy_build_args()},
                labels={_BASE_NAME: base, "nb2svc.version": __version__, f"nb2svc.{kind}": "1"},
                network_mode="host",  # apt reaches what the host reaches
                rm=True,
                forcerm=True,
            )
            follow_build_log(chunks, f"building {what} {tag} on {base}", progress)
        except BuildError as e:
            raise BuildError(
                e.message, hint=f"set {setting} to a Debian or Ubuntu image whose apt reaches a mirror"
            ) from e
        except docker.errors.APIError as e:
            raise BuildError(f"building {what} {tag} on {base} failed: {e.explanation or e}") from e
    return tag


def find(client: Any, name: str) -> Any | None:
    try:
        return client.containers.get(container_name(name))
    except docker.errors.NotFound:
        return None


def url(container: Any) -> str | None:
    bindings = (container.attrs.get("HostConfig", {}).get("PortBindings") or {}).get("8080/tcp") or []
    if not bindings:
        return None
    host = bindings[0].get("HostIp") or "127.0.0.1"
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{bindings[0]['HostPort']}"  # noqa: S104


def start(client: Any, lb: Balancer, lb_image: str) -> str:
    """Start the load balancer (or keep the one running with the same settings); its URL."""
    env = {
        "NB2SVC_LB_SERVICE": lb.service,
        "NB2SVC_LB_PORT": str(lb.port),
        "NB2SVC_LB_SLOTS": str(lb.slots),
        "NB2SVC_LB_TIMEOUT": lb.timeout,
        "NB2SVC_LB_MAXCONN": str(lb.maxconn),
    }
    current = find(client, lb.name)
    if current is not None:
        same = set(current.attrs["Config"].get("Env") or []) >= {f"{k}={v}" for k, v in env.items()}
        current_url = url(current)
        if same and current_url and (lb.host_port is None or current_url.endswith(f":{lb.host_port}")):
            if current.status != "running":
                current.start()
            return current_url
        # new settings: the same address, a new container
        if lb.host_port is None and current_url:
            lb = replace(lb, host_port=int(current_url.rsplit(":", 1)[1]))
        current.remove(force=True)
    for _ in range(3):  # a free port can be taken between the check and Docker's bind
        host_port = lb.host_port or _free_port(lb.host)
        try:
            container = client.containers.run(
                lb_image,
                name=container_name(lb.name),
                detach=True,
                environment=env,
                network=lb.network,
                ports={"8080/tcp": (lb.host, host_port)},
                labels={NAME_LABEL: lb.name, ROLE_LABEL: "lb"},
                restart_policy={"Name": "unless-stopped"},
            )
        except docker.errors.APIError as e:
            leftover = find(client, lb.name)
            if leftover is not None:
                leftover.remove(force=True)
            if "port is already allocated" in str(e) or "address already in use" in str(e):
                if lb.host_port is None:
                    continue
                raise DeployError(
                    f"the load balancer of {lb.name!r} cannot listen on {lb.host}:{host_port}: it is taken",
                    "pick another with --publish HOST:PORT",
                ) from e
            raise EngineUnavailable(f"starting the load balancer of {lb.name!r} failed: {e.explanation or e}") from e
        container.reload()
        found = url(container)
        assert found is not None  # noqa: S101  # published just above
        return found
    raise EngineUnavailable(f"no free port on {lb.host} for the load balancer of {lb.name!r}")


def remove(client: Any, name: str) -> bool:
    container = find(client, name)
    if container is None:
        return False
    container.remove(force=True)
    return True


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port
