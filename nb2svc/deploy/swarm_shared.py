"""What a training deployment's replicas share on Swarm (SPEC §7): a Redis service and named volumes.

``deploy --with-redis`` runs Redis as a service of its own, ``NAME-redis``, on the deployment's overlay
network (``endpoint_mode=dnsrr``: its name resolves to its one task, no virtual IP needed), from an image built
here out of Debian's ``redis-server`` package on the OS image the function's base came from (templates/redis/,
as the load balancer's). Its data lives on the named volume ``nb2svc-NAME-redis`` (AOF on) and it is pinned to
the node where `deploy` ran, so that a restarted task finds its volume again. A password, made at creation,
is in the Redis service's environment (``REDISCLI_AUTH``) and in the replicas' ``NB2SVC_QUEUE_URL``.

Training replicas with a queue mount the named volume ``nb2svc-NAME-runs`` at their runs folder: one folder
for all of them on one node. Every volume nb2svc makes carries ``nb2svc.deploy.part-of=NAME`` and goes with
``--destroy``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

import docker.errors
import docker.types

from . import lb, swarm_tasks
from .engine import EngineUnavailable, Progress
from .swarm_spec import PART_OF, PREFIX, SwarmSettings

ROLE = PREFIX + "role"
REDIS_PORT = 6379
REDIS_DATA = "/var/lib/redis"  # Debian's redis-server package's folder (templates/redis/redis.conf)
_S = 1_000_000_000


def redis_service(name: str) -> str:
    return f"{name}-redis"


def redis_volume(name: str) -> str:
    return f"nb2svc-{name}-redis"


def runs_volume(name: str) -> str:
    return f"nb2svc-{name}-runs"


def find_redis(client: Any, name: str) -> Any | None:
    for service in client.services.list(filters={"label": f"{PART_OF}={name}"}):
        if (service.attrs["Spec"].get("Labels") or {}).get(ROLE) == "redis":
            return service
    return None


def redis_status(client: Any, name: str) -> tuple[int, int] | None:
    """(running, desired) tasks of the deployment's Redis; None when it has none."""
    service = find_redis(client, name)
    if service is None:
        return None
    desired = int(service.attrs["Spec"].get("Mode", {}).get("Replicated", {}).get("Replicas", 0))
    tasks = service.tasks(filters={"desired-state": "running"})
    return sum(t["Status"]["State"] == "running" for t in tasks), desired


def start_redis(
    client: Any,
    name: str,
    network: str,
    base: str,
    settings: SwarmSettings,
    progress: Progress,
) -> str:
    """Create the deployment's Redis (or bring a parked one back) and wait until it answers; the queue URL."""
    service = find_redis(client, name)
    if service is None:
        image = lb.image(client, base, progress, kind="redis", setting="NB2SVC_REDIS_BASE")
        password = secrets.token_urlsafe(24)
        node = (client.info().get("Swarm") or {}).get("NodeID")
        progress(f"creating service {redis_service(name)}: Redis from {image}, data on volume {redis_volume(name)}")
        try:
            service = client.services.create(**_redis_kwargs(name, network, image, password, node, settings))
        except docker.errors.APIError as e:
            raise EngineUnavailable(f"creating service {redis_service(name)} failed: {e.explanation or e}") from e
    else:
        scale_redis(client, name, 1, progress)
    _wait_healthy(service, settings.timeout)
    progress(f"{redis_service(name)}: Redis answering on the network {network}")
    return queue_url(service)


def queue_url(service: Any) -> str:
    env = dict(e.partition("=")[::2] for e in service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env") or [])
    return f"redis://:{env['REDISCLI_AUTH']}@{service.name}:{REDIS_PORT}/0"


def scale_redis(client: Any, name: str, replicas: int, progress: Progress) -> None:
    """0 parks it (its volume kept), 1 brings it back; nothing where the deployment has no Redis."""
    service = find_redis(client, name)
    if service is None:
        return
    service.reload()
    mode = service.attrs["Spec"].get("Mode", {}).get("Replicated", {})
    if mode.get("Replicas") != replicas:
        service.scale(replicas)
        progress(f"{'parked' if replicas == 0 else 'resumed'} {service.name}")
    if replicas == 0:
        deadline = time.monotonic() + 60
        while any(t["Status"]["State"] not in swarm_tasks.ENDED for t in service.tasks()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)


def remove(client: Any, name: str, progress: Progress) -> bool:
    """Remove the Redis service and every volume nb2svc made for ``name`` on this node; whether there was any.

    A volume is removed once the containers that used it are gone; volumes on other nodes stay there.
    """
    found = False
    for service in client.services.list(filters={"label": f"{PART_OF}={name}"}):
        service.remove()
        progress(f"removed service {service.name}")
        found = True
    for volume in client.volumes.list(filters={"label": f"{PART_OF}={name}"}):
        _remove_volume(volume)
        progress(f"removed volume {volume.name} (on this node)")
        found = True
    return found


def _remove_volume(volume: Any) -> None:
    deadline = time.monotonic() + 60  # in use until Swarm has removed the stopped tasks' containers
    while True:
        try:
            volume.remove()
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _wait_healthy(service: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        service.reload()
        tasks = service.tasks(filters={"desired-state": "running"})
        if any(t["Status"]["State"] == "running" for t in tasks) and _healthy(service, tasks):
            return
        if time.monotonic() > deadline:
            raise EngineUnavailable(
                f"{service.name} (Redis) did not start within {timeout:g} s: {swarm_tasks.cause(service)}",
                f"see `docker service ps {service.name}` and `docker service logs {service.name}`",
            )
        time.sleep(0.5)


def _healthy(service: Any, tasks: list[Mapping[str, Any]]) -> bool:
    """Whether a running task's container says healthy (its HEALTHCHECK: `redis-cli ping`)."""
    for t in tasks:
        cid = (t["Status"].get("ContainerStatus") or {}).get("ContainerID")
        if t["Status"]["State"] != "running" or not cid:
            continue
        try:
            health = service.client.api.inspect_container(cid)["State"].get("Health") or {}
        except docker.errors.NotFound:
            return True  # on another node: its running state is what can be seen from here
        if health.get("Status") == "healthy":
            return True
    return False


def _redis_kwargs(
    name: str, network: str, image: str, password: str, node: str | None, settings: SwarmSettings
) -> dict[str, Any]:
    labels = {PART_OF: name, ROLE: "redis"}
    return {
        "image": image,
        "name": redis_service(name),
        "labels": labels,
        "container_labels": labels,
        "env": [f"REDISCLI_AUTH={password}"],
        "mode": docker.types.ServiceMode("replicated", replicas=1),
        "networks": [network],
        "endpoint_spec": docker.types.EndpointSpec(mode="dnsrr"),  # no virtual IP: it needs IPVS
        "mounts": [docker.types.Mount(REDIS_DATA, redis_volume(name), type="volume", labels={PART_OF: name})],
        # its volume is on this node: a task elsewhere would start empty
        "constraints": [f"node.id=={node}"] if node else [],
        "healthcheck": docker.types.Healthcheck(
            test=[], interval=int(settings.health_interval * _S), timeout=3 * _S, retries=3, start_period=10 * _S
        ),
        "restart_policy": docker.types.RestartPolicy(condition="any", delay=int(settings.restart_delay * _S)),
        "stop_grace_period": int(settings.stop_grace * _S),  # SIGTERM: Redis writes its AOF and exits
    }
