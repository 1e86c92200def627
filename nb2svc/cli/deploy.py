"""Deploy and operate (SPEC §6): deploy, deployments, rollback, scale, decommission.

Swarm deployments go through the :class:`~nb2svc.deploy.engine.Engine` interface; ``--target kubernetes``
writes manifests (and hands them to ``kubectl apply -k`` with ``--apply``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..deploy.engine import Deployment, DeployOptions, engine
from ..deploy.labels import ImageInfo
from ..errors import ExternalError
from ._base import main, print_table, progress_option, progress_printer

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _read_image(ref: str) -> ImageInfo:
    """The image's labels from its registry's API (nothing pulled)."""
    from ..deploy.catalog import read_image

    return read_image(ref)


def _env(values: tuple[str, ...]) -> dict[str, str]:
    for e in values:
        if "=" not in e or e.startswith("="):
            raise click.BadParameter(f"{e!r} is not NAME=VALUE", param_hint="--env")
    return dict(e.partition("=")[::2] for e in values)


def _show(d: Deployment, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(d.as_json(), indent=2))
    else:
        shared = f"; Redis {d.redis[0]} {d.redis[1]}/{d.redis[2]}" if d.redis else ""
        shared += f"; runs on volume {d.runs_volume}" if d.runs_volume else ""
        click.echo(f"{d.name}: {d.running}/{d.replicas} replicas of {d.image}, {d.state}, at {d.url or '-'}{shared}")


@main.command()
@click.argument("ref", required=False)
@click.option("--name", required=True, help="The deployment's name (a DNS label).")
@click.option("--target", type=click.Choice(["swarm", "kubernetes"]), default="swarm", show_default=True)
@click.option("--replicas", type=click.IntRange(1), help="Replicas (new deployment: 1; else kept).")
@click.option("--node", metavar="CONSTRAINT", help="Pin replicas: LABEL=VALUE (a node label) or a host name.")
@click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="Set in every replica (added to its own).")
@click.option("--publish", metavar="[HOST:]PORT", help="swarm: where the load balancer listens (127.0.0.1:free).")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="kubernetes: the folder to write.")
@click.option("--apply", "do_apply", is_flag=True, help="kubernetes: then `kubectl apply -k` the folder.")
@click.option(
    "--queue",
    metavar="redis://HOST:PORT/DB",
    help="training: replicas share this queue and run store (NB2SVC_QUEUE_URL; docs/scale-out.md).",
)
@click.option(
    "--with-redis",
    is_flag=True,
    help="swarm, training: run Redis beside the replicas as their queue, data on a volume (docs/deploy.md).",
)
@json_option
@progress_option
def deploy(
    ref: str | None,
    name: str,
    target: str,
    replicas: int | None,
    node: str | None,
    env: tuple[str, ...],
    publish: str | None,
    output: str | None,
    do_apply: bool,
    queue: str | None,
    with_redis: bool,
    as_json: bool,
    show_progress: bool,
) -> None:
    """Deploy REF as NAME, or roll NAME to REF; without REF, bring a parked NAME back.

    Waits until every replica is healthy behind one URL; a version that never becomes healthy is rolled
    back (the old one serving throughout) and the command exits non-zero naming the cause.
    """
    if target == "kubernetes":
        if with_redis:
            raise click.UsageError(
                "--with-redis is for --target swarm: on Kubernetes run Redis yourself (a managed one, or a "
                "StatefulSet) and pass --queue redis://HOST:6379/0"
            )
        _kubernetes(ref, name, output, do_apply, replicas=replicas, node=node, env=_env(env), queue=queue)
        return
    image = _read_image(ref) if ref else None
    settings = _env(env) | ({"NB2SVC_QUEUE_URL": queue} if queue else {})  # files: -e NB2SVC_STORAGE_URL=s3://
    options = DeployOptions(replicas=replicas, node=node, env=settings, publish=publish, with_redis=with_redis)
    _show(engine("swarm").deploy(name, image, options, progress_printer(show_progress)), as_json)


def _kubernetes(
    ref: str | None,
    name: str,
    output: str | None,
    do_apply: bool,
    *,
    replicas: int | None,
    node: str | None,
    env: Any,
    queue: str | None,
) -> None:
    if not ref or not output:
        raise click.UsageError("--target kubernetes needs REF and -o DIR")
    from ..deploy.engine import check_image, check_name
    from ..deploy.kubernetes import write_manifests

    image = check_image(_read_image(ref))
    paths = write_manifests(
        image, check_name(name), Path(output), replicas=replicas, node=node, env=env, queue_url=queue
    )
    for path in paths:
        click.echo(str(path))
    if do_apply:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            hint = f"install it, or apply the folder later: kubectl apply -k {output}"
            raise ExternalError("kubectl is not on PATH (the manifests are written)", hint)
        # an argument list, no shell: the folder's name is one argument whatever it holds
        done = subprocess.run(  # noqa: S603
            [kubectl, "apply", "-k", output], capture_output=True, text=True, check=False
        )
        click.echo(done.stdout, nl=False)
        if done.returncode:
            raise ExternalError(f"kubectl apply -k {output} failed: {done.stderr.strip()}")


@main.command()
@json_option
def deployments(as_json: bool) -> None:
    """List the deployments: name, image, notebook, kind, commit, replicas, URL, state."""
    found = engine("swarm").list()
    if as_json:
        click.echo(json.dumps([d.as_json() for d in found], indent=2))
        return
    console = Console()
    if not console.is_terminal:  # piped: one line a deployment
        console.width = 200
    table = Table()
    shared = any(d.redis for d in found)  # the column only where some deployment has its own Redis
    for col in ("name", "image", "notebook", "kind", "commit", "replicas", "url", "state", *(("redis",) * shared)):
        table.add_column(col, overflow="fold")
    for d in found:
        cells = (d.name, d.image, d.notebook or "", d.kind or "", (d.commit or "")[:12])
        row = [*map(escape, cells), f"{d.running}/{d.replicas}", escape(d.url or ""), d.state]
        if shared:
            row.append(f"{d.redis[1]}/{d.redis[2]}" if d.redis else "")
        table.add_row(*row)
    print_table(console, f"{len(found)} deployment{'' if len(found) == 1 else 's'}", table)


@main.command()
@click.argument("name")
@json_option
@progress_option
def rollback(name: str, as_json: bool, show_progress: bool) -> None:
    """Roll NAME back to its version before."""
    _show(engine("swarm").rollback(name, progress_printer(show_progress)), as_json)


@main.command()
@click.argument("name")
@click.argument("replicas", type=click.IntRange(0))
@json_option
@progress_option
def scale(name: str, replicas: int, as_json: bool, show_progress: bool) -> None:
    """Run REPLICAS replicas of NAME (0 parks it)."""
    _show(engine("swarm").scale(name, replicas, progress_printer(show_progress)), as_json)


@main.command()
@click.argument("name")
@click.option("--destroy", is_flag=True, help="Remove it and everything nb2svc made for it.")
@progress_option
def decommission(name: str, destroy: bool, show_progress: bool) -> None:
    """Park NAME (0 replicas, spec and image kept; `deploy --name NAME` resumes it); --destroy removes it."""
    swarm = engine("swarm")
    progress = progress_printer(show_progress)
    if destroy:
        swarm.destroy(name, progress)
        click.echo(f"{name}: destroyed")
        return
    swarm.park(name, progress)
    click.echo(f"{name}: parked (0 replicas); `nb2svc deploy --name {name}` brings it back")
