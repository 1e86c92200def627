"""Docker Swarm, through the docker SDK's services API: one service per deployment, an overlay network of its
own, and a load balancer in front (:mod:`.lb`) so that every replica answers at one URL.

Updates roll new replicas in first (``order=start-first``), each taking requests only once its ``/health``
answers; one that fails within the monitor window has Swarm roll the whole update back
(``failure_action=rollback``) while the old replicas keep serving. `deploy` waits for the outcome and, on
failure, reads the cause from the failed tasks' logs (the runtime logs ``setup failed: cell N raised …``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import docker.errors
import httpx

from ..image import connect
from . import lb, swarm_shared, swarm_tasks
from .engine import (
    DeployError,
    Deployment,
    DeployOptions,
    Engine,
    EngineUnavailable,
    PlacementError,
    Progress,
    RolledBack,
    State,
    UnknownDeployment,
    check_image,
    check_name,
    no_progress,
    register,
)
from .labels import ImageInfo
from .swarm_spec import (
    NAME_LABEL,
    Plan,
    Release,
    SwarmSettings,
    check_placement,
    constraint,
    network_name,
    service_kwargs,
)

_STARTING = {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"}


class SwarmEngine(Engine):
    name = "swarm"

    def __init__(
        self, client: Any = None, settings: SwarmSettings | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self._client = client
        self.settings = settings or SwarmSettings.from_env(os.environ if environ is None else environ)
        self._checked = False

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = connect()
        if not self._checked:
            check_manager(self._client)
            self._checked = True
        return self._client

    # -- the Engine interface ---------------------------------------------------------------------------

    def deploy(
        self, name: str, image: ImageInfo | None, options: DeployOptions, progress: Progress = no_progress
    ) -> Deployment:
        check_name(name)
        if image is not None:
            check_image(image)
        if options.replicas is not None and not 0 < options.replicas <= self.settings.lb_slots:
            raise DeployError(f"--replicas {options.replicas}: between 1 and {self.settings.lb_slots}")
        service = self._find(name)
        if service is None:
            if image is None:
                raise UnknownDeployment(name, self.name, f"create it from an image: nb2svc deploy REF --name {name}")
            return self._create(name, image, options, progress)
        plan = Plan.from_service(service.attrs)
        release = Release.of(image) if image else plan.release
        replicas = options.replicas or plan.replicas or plan.parked_replicas or 1
        new = replace(
            plan,
            release=release,
            previous=plan.release if release.pinned != plan.release.pinned else plan.previous,
            replicas=replicas,
            node=options.node or plan.node,
            env={**plan.env, **options.env},
            parked_replicas=None,
        )
        self._check_placement(new)
        new = self._shared(new, options, image.labels if image else {}, progress)
        if options.publish or lb.find(self.client, name) is None:
            new = replace(new, url=self._balancer(new, image.labels if image else {}, options.publish, progress))
        if release != plan.release:
            progress(f"rolling {name} to {release.image}: {replicas} replica(s), new ones first")
        else:
            progress(f"{'resuming' if plan.replicas == 0 else 'updating'} {name}: {replicas} replica(s)")
        return self._apply(service, new, progress)

    def rollback(self, name: str, progress: Progress = no_progress) -> Deployment:
        service = self._get(name)
        plan = Plan.from_service(service.attrs)
        if plan.previous is None:
            raise DeployError(f"{name} has no version before {plan.release.image} to roll back to")
        progress(f"rolling {name} back to {plan.previous.image}")
        return self._apply(service, replace(plan, release=plan.previous, previous=plan.release), progress)

    def scale(self, name: str, replicas: int, progress: Progress = no_progress) -> Deployment:
        if replicas == 0:
            return self.park(name, progress)
        if not 0 < replicas <= self.settings.lb_slots:
            raise DeployError(f"{replicas} replicas: between 0 and {self.settings.lb_slots}")
        service = self._get(name)
        progress(f"scaling {name} to {replicas} replica(s)")
        return self._apply(service, replace(Plan.from_service(service.attrs), replicas=replicas), progress)

    def park(self, name: str, progress: Progress = no_progress) -> Deployment:
        service = self._get(name)
        plan = Plan.from_service(service.attrs)
        parked = replace(plan, replicas=0, parked_replicas=plan.replicas or plan.parked_replicas or 1)
        progress(f"parking {name}: 0 replicas, `nb2svc deploy --name {name}` brings back {parked.parked_replicas}")
        done = self._apply(service, parked, progress)
        if plan.redis:  # after the replicas that use it; its data stays on its volume
            swarm_shared.scale_redis(self.client, name, 0, progress)
            done = self._deployment(service)
        return done

    def destroy(self, name: str, progress: Progress = no_progress) -> None:
        if not self._remove(name, progress):
            raise UnknownDeployment(name, self.name)

    def get(self, name: str) -> Deployment:
        return self._deployment(self._get(name))

    def list(self) -> list[Deployment]:
        services = self.client.services.list(filters={"label": NAME_LABEL})
        return sorted((self._deployment(s) for s in services), key=lambda d: d.name)

    # -- creating and changing ---------------------------------------------------------------------------

    def _create(self, name: str, image: ImageInfo, options: DeployOptions, progress: Progress) -> Deployment:
        client = self.client
        plan = Plan(
            name=name,
            release=Release.of(image),
            replicas=options.replicas or 1,
            network=network_name(name),
            url="",
            port=int(options.env.get("PORT", image.port)),
            node=options.node,
            env=dict(options.env),
        )
        self._check_placement(plan)
        try:
            if not _networks(client, plan.network):
                client.networks.create(plan.network, driver="overlay", attachable=True, labels={NAME_LABEL: name})
                progress(f"created overlay network {plan.network}")
            plan = self._shared(plan, options, image.labels, progress)
            plan = replace(plan, url=self._balancer(plan, image.labels, options.publish, progress))
            progress(f"creating service {name}: {plan.replicas} replica(s) of {image.ref}")
            try:
                service = client.services.create(**service_kwargs(plan, self.settings))
            except docker.errors.APIError as e:
                raise EngineUnavailable(f"creating service {name} failed: {e.explanation or e}") from e
            return self._converge(service, plan, None, progress, creating=True)
        except BaseException as e:  # interrupted too: nothing half-made is left behind
            self._remove(name, no_progress)
            if isinstance(e, DeployError):
                e.message += f"; nothing is deployed as {name}"
            raise

    def _remove(self, name: str, progress: Progress) -> bool:
        """Remove the service, its load balancer and its network; whether there was any of them."""
        client = self.client
        service = self._find(name)
        networks = client.networks.list(filters={"label": f"{NAME_LABEL}={name}"})
        if service is not None:
            service.remove()
            progress(f"removed service {name}")
        shared = swarm_shared.remove(client, name, progress)  # its Redis and volumes, before the network
        balancer = lb.remove(client, name)
        if balancer:
            progress(f"removed load balancer {lb.container_name(name)}")
        for network in networks:
            self._remove_network(network)
            progress(f"removed network {network.name}")
        return service is not None or shared or balancer or bool(networks)

    def _apply(self, service: Any, plan: Plan, progress: Progress) -> Deployment:
        service.reload()
        before = service.attrs.get("UpdateStatus")
        try:
            service.update(**service_kwargs(plan, self.settings), fetch_current_spec=False)
        except docker.errors.APIError as e:
            raise EngineUnavailable(f"updating service {plan.name} failed: {e.explanation or e}") from e
        return self._converge(service, plan, before, progress)

    def _shared(self, plan: Plan, options: DeployOptions, labels: Mapping[str, str], progress: Progress) -> Plan:
        """``plan`` with what training replicas share: a Redis beside them (started here), a runs volume."""
        if options.with_redis and plan.release.kind != "training":
            raise DeployError(
                f"--with-redis: {plan.name} is a {plan.release.kind} function; a queue is for training",
                "leave out --with-redis",
            )
        if options.with_redis and "NB2SVC_QUEUE_URL" in options.env:
            raise DeployError("--with-redis and --queue both give a queue", "pick one")
        env = dict(plan.env)
        redis = plan.redis
        if options.with_redis or (redis and "NB2SVC_QUEUE_URL" not in options.env):
            base = self.settings.redis_base or lb.default_base(self.client, labels)
            env["NB2SVC_QUEUE_URL"] = swarm_shared.start_redis(
                self.client, plan.name, plan.network, base, self.settings, progress
            )
            redis = swarm_shared.redis_service(plan.name)
        elif redis:  # --queue elsewhere now: its own Redis is no longer used
            swarm_shared.scale_redis(self.client, plan.name, 0, progress)
            redis = None
        shared = plan.release.kind == "training" and "NB2SVC_QUEUE_URL" in env and "NB2SVC_STORAGE_URL" not in env
        volume = swarm_shared.runs_volume(plan.name) if shared else None
        if volume and volume != plan.runs_volume:
            progress(f"{plan.name}: runs folder {plan.runs_dir} on volume {volume}, mounted by every replica")
        return replace(plan, env=env, redis=redis, runs_volume=volume)

    def _balancer(self, plan: Plan, labels: Mapping[str, str], publish: str | None, progress: Progress) -> str:
        host, port = "127.0.0.1", None
        if publish:
            host_part, sep, port_part = publish.rpartition(":")
            host = host_part if sep and host_part else host
            try:
                port = int(port_part)
            except ValueError:
                raise DeployError(f"--publish {publish!r}: expected HOST:PORT or PORT") from None
        base = self.settings.lb_base or lb.default_base(self.client, labels)
        image = lb.image(self.client, base, progress)
        balancer = lb.Balancer(
            name=plan.name,
            service=plan.name,
            network=plan.network,
            port=plan.port,
            host=host,
            host_port=port,
            slots=self.settings.lb_slots,
            timeout=f"{int(plan.release.resources.timeout or 300) + 5}s",
        )
        url = lb.start(self.client, balancer, image)
        progress(f"load balancer {lb.container_name(plan.name)} at {url}")
        return url

    # -- waiting for the outcome -------------------------------------------------------------------------

    def _converge(
        self, service: Any, plan: Plan, before: Any, progress: Progress, *, creating: bool = False
    ) -> Deployment:
        """Wait until the service runs ``plan`` healthy; or raise, the version before restored, saying why.

        Swarm rolls a failed update back by itself (``failure_action=rollback``), but only once a new task's
        health check has failed past its start period. A replica whose setup failed says so in its log at
        once: then nb2svc restores the version before itself rather than wait.
        """
        outcome, cause = self._wait(service, plan, before, fast=True, creating=creating)
        if outcome == "ok":
            if plan.replicas:
                self._answering(plan)
                progress(f"{plan.name}: {plan.replicas} healthy replica(s) at {plan.url}")
            return self._deployment(service)
        if outcome == "unplaced":
            where = f"--node {plan.node!r} ({constraint(plan.node)})" if plan.node else "the resources it reserves"
            message = f"no node can run {plan.name} with {where}: {cause}"
            hint = "label a node (`docker node update --label-add K=V NODE`) or change --node"
            error: DeployError = PlacementError(message, hint)
        else:
            message = f"{plan.name}: {plan.release.image} never became healthy: {cause}"
            error = RolledBack(message, "fix the notebook, then deploy again")
        if creating:
            raise error
        if outcome != "rolled back":  # nb2svc saw it first: put the version before back, as Swarm would
            self._restore(service, progress)
        progress(f"{plan.name}: back to its version before")
        error.message += f"; {plan.name} is back to its version before, which kept serving"
        raise error

    def _restore(self, service: Any, progress: Progress) -> None:
        service.reload()
        previous = service.attrs.get("PreviousSpec")
        if not previous:
            return
        before = service.attrs.get("UpdateStatus")
        self.client.api.update_service(
            service.id,
            service.version,
            task_template=previous["TaskTemplate"],
            name=previous["Name"],
            labels=previous.get("Labels"),
            mode=previous.get("Mode"),
            update_config=previous.get("UpdateConfig"),
            rollback_config=previous.get("RollbackConfig"),
            endpoint_spec=previous.get("EndpointSpec"),
        )
        self._wait(service, Plan.from_service({"Spec": previous}), before, fast=False, creating=False)

    def _wait(self, service: Any, plan: Plan, before: Any, *, fast: bool, creating: bool) -> tuple[str, str]:
        """("ok", ""), ("rolled back" | "unhealthy" | "unplaced", the cause)."""
        deadline = time.monotonic() + self.settings.timeout
        unplaced: dict[str, float] = {}
        while True:
            service.reload()
            status = service.attrs.get("UpdateStatus")
            state = (status or {}).get("State") if status != before else None
            if state in {"rollback_completed", "rollback_paused", "paused"}:
                return "rolled back", swarm_tasks.cause(service)
            tasks = service.tasks()
            template = service.attrs["Spec"]["TaskTemplate"]
            live = [t for t in tasks if t["DesiredState"] == "running"]
            new = [t for t in tasks if swarm_tasks.runs(t, template)]
            running = [t for t in live if t["Status"]["State"] == "running" and swarm_tasks.runs(t, template)]
            for t in live:
                if t["Status"]["State"] == "pending" and "no suitable node" in t["Status"].get("Err", ""):
                    if time.monotonic() - unplaced.setdefault(t["ID"], time.monotonic()) > self.settings.placement_wait:
                        return "unplaced", t["Status"]["Err"]
            if fast and state not in {"rollback_started"} and len(running) < plan.replicas:
                failed = swarm_tasks.setup_failed(service, new)
                if failed:
                    return "unhealthy", failed
                if creating and not running and any(t["Status"]["State"] in {"failed", "rejected"} for t in new):
                    return "unhealthy", swarm_tasks.cause(service)
            parked = plan.replicas > 0 or not any(t["Status"]["State"] == "running" for t in tasks)
            if state in {None, "completed"} and len(running) == len(live) == plan.replicas and parked:
                return "ok", ""  # parked: its replicas have stopped, not only been told to
            if time.monotonic() > deadline:
                raise EngineUnavailable(
                    f"{plan.name} did not converge within {self.settings.timeout:g} s",
                    f"see `docker service ps {plan.name}`; Swarm goes on trying",
                )
            time.sleep(0.5)

    def _answering(self, plan: Plan) -> None:
        """Until the load balancer has put every replica in (it checks /health each second)."""
        seen: set[str] = set()
        ok = 0
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=5) as http:
            while time.monotonic() < deadline:
                try:
                    r = http.get(f"{plan.url}/health")
                    if r.status_code == 200:
                        ok += 1
                        seen.add(r.headers.get("x-nb2svc-instance", ""))
                        if len(seen - {""}) >= plan.replicas or ("" in seen and ok >= 2 * plan.replicas):
                            return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise EngineUnavailable(
            f"{plan.name}'s replicas are healthy but its load balancer at {plan.url} does not answer for all",
            f"see `docker logs {lb.container_name(plan.name)}`",
        )

    def _check_placement(self, plan: Plan) -> None:
        if plan.node:
            check_placement(self.client.api.nodes(), plan.node)

    # -- reading ------------------------------------------------------------------------------------------

    def _find(self, name: str) -> Any | None:
        for service in self.client.services.list(filters={"name": name}):
            if service.name == name:
                if (service.attrs["Spec"].get("Labels") or {}).get(NAME_LABEL) != name:
                    raise DeployError(f"service {name!r} exists and nb2svc did not make it", "pick another --name")
                return service
        return None

    def _get(self, name: str) -> Any:
        service = self._find(name)
        if service is None:
            raise UnknownDeployment(name, self.name)
        return service

    def _deployment(self, service: Any) -> Deployment:
        plan = Plan.from_service(service.attrs)
        tasks = [t for t in service.tasks() if t["DesiredState"] == "running"]
        running = sum(t["Status"]["State"] == "running" for t in tasks)
        status = (service.attrs.get("UpdateStatus") or {}).get("State")
        state: State
        if plan.replicas == 0:
            state = "parked"
        elif status in {"updating", "rollback_started"}:
            state = "updating"
        elif status in {"paused", "rollback_paused"}:
            state = "failed"
        elif running >= plan.replicas:
            state = "running"
        else:
            starting = any(t["Status"]["State"] in _STARTING for t in tasks)
            state = "updating" if starting else "failed"
        r = plan.release
        redis = swarm_shared.redis_status(self.client, plan.name) if plan.redis else None
        return Deployment(
            name=plan.name,
            engine=self.name,
            image=r.image,
            url=plan.url or None,
            replicas=plan.replicas,
            running=running,
            state=state,
            notebook=r.notebook,
            kind=r.kind,
            commit=r.commit,
            previous=plan.previous.image if plan.previous else None,
            redis=(plan.redis, *redis) if plan.redis and redis else None,
            runs_volume=plan.runs_volume,
        )

    def _remove_network(self, network: Any) -> None:
        deadline = time.monotonic() + 60  # the service's tasks leave the network as they stop
        while True:
            try:
                network.remove()
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        # gone from the managers first, from this node's list a moment later: a deploy of the same name
        # right after must not find the old one
        while _networks(self.client, network.name) and time.monotonic() < deadline:
            time.sleep(0.2)


def _networks(client: Any, name: str) -> list[Any]:
    return [n for n in client.networks.list(names=[name]) if n.name == name]  # the filter matches substrings


def check_manager(client: Any) -> None:
    swarm = client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        raise EngineUnavailable(
            "this Docker is not a swarm manager",
            "run `docker swarm init` (scripts/docker-setup does, for one machine), or point DOCKER_HOST at a manager",
        )


register("swarm", SwarmEngine)
