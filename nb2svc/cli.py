"""The command line: a thin layer over the library; exceptions become messages and exit codes here only.

Exit codes: 0 ok, 1 the user's input is wrong, 2 usage, 3 an external system failed.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .client import Client
from .errors import Nb2svcError
from .openapi import openapi_document
from .spec import KINDS, ServiceSpec, inspect_notebook

_kind = click.option("--kind", type=click.Choice(KINDS), help="Override metadata.nb2svc.kind.")


class _Group(click.Group):
    """Maps nb2svc's errors to one-line messages and exit codes; tracebacks only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Nb2svcError as e:
            _fail(ctx, f"Error: {e.message}" + (f"\n  hint: {e.hint}" if e.hint else ""), e.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:
            _fail(ctx, f"Error: unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)", 1)


def _fail(ctx: click.Context, message: str, code: int) -> NoReturn:
    if ctx.obj and ctx.obj.get("debug"):
        traceback.print_exc()
    click.echo(message, err=True)
    ctx.exit(code)
    raise AssertionError("unreachable")  # ctx.exit raises


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="nb2svc")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Compile Jupyter notebooks into typed HTTP functions."""
    ctx.obj = {"debug": debug}


def _show(spec: ServiceSpec) -> None:
    console = Console()
    if not console.is_terminal:  # piped: don't wrap types and defaults at 80 columns
        console.width = 160
    console.print(f"[bold]{spec.notebook.name}[/]  kind: {spec.kind}  sha256: {spec.sha256[:12]}")
    cells = f"setup cells {[c.number for c in spec.setup_cells]}, parameters cell {spec.parameters_cell.number}"
    console.print(cells + (f", outputs cell {spec.outputs_cell.number}" if spec.outputs_cell else ""))
    table = Table(title="Parameters", title_justify="left")
    for col in ("name", "type", "default", "required", "help"):
        table.add_column(col)
    for p in spec.parameters:
        default = json.dumps(p.default) if p.has_default else f"= {p.default_source}"
        table.add_row(p.name, escape(p.type.python()), escape(default), "yes" if p.required else "", escape(p.help))
    console.print(table)
    if spec.outputs:
        out = Table(title="Outputs", title_justify="left")
        for col in ("name", "type", "help"):
            out.add_column(col)
        for o in spec.outputs:
            out.add_row(o.name, escape(o.type.python()), escape(o.help))
        console.print(out)
    if spec.requirements:
        console.print("requirements: " + escape(" ".join(spec.requirements)))
    if spec.system_packages:
        console.print("system packages: " + escape(" ".join(spec.system_packages)))


@main.command()
@click.argument("notebook", type=click.Path(dir_okay=False))
@_kind
@click.option("--json", "as_json", is_flag=True, help="Print the typed spec as JSON.")
@click.option("--openapi", is_flag=True, help="Print the OpenAPI 3.1 document.")
def inspect(notebook: str, kind: str | None, as_json: bool, openapi: bool) -> None:
    """Show the typed API a notebook compiles to."""
    spec = inspect_notebook(notebook, kind)
    if openapi:
        click.echo(json.dumps(openapi_document(spec), indent=2))
    elif as_json:
        click.echo(json.dumps(spec.to_dict(), indent=2))
    else:
        _show(spec)


@main.command()
@click.argument("notebook", type=click.Path(dir_okay=False))
@_kind
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
def serve(notebook: str, kind: str | None, host: str, port: int) -> None:
    """Serve a notebook locally (no container); settings from NB2SVC_* variables."""
    from .runtime import serve as run_service  # the runtime is only imported where it is needed

    spec = inspect_notebook(notebook, kind)
    click.echo(f"serving {spec.name} ({spec.kind}) on http://{host}:{port}", err=True)
    run_service(spec, host=host, port=port)


@main.command()
@click.argument("url")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE", help="A parameter, typed by the API.")
@click.option("--json", "body", help="A JSON object of parameters (then -p values override).")
@click.option("--no-wait", is_flag=True, help="Training: print the run and return at once.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait for the answer.")
def call(url: str, params: tuple[str, ...], body: str | None, no_wait: bool, timeout: float) -> None:
    """Call a running service; values are converted to the types its OpenAPI document gives."""
    raw: dict[str, str] = {}
    for p in params:
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{p!r}: write NAME=VALUE", param_hint="-p")
        raw[name] = value
    values: Any = None
    if body is not None:
        try:
            values = json.loads(body)
        except json.JSONDecodeError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="--json") from None
        if not isinstance(values, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--json")
    with Client(url, timeout=timeout) as client:
        answer = client.call(raw, values, wait=not no_wait)
    click.echo(json.dumps(answer, indent=2))


def _build_options(
    backend: str,
    base: str | None,
    gpu: bool,
    wheelhouse: str | None,
    no_pip_settings: bool,
    watchdog_image: str | None,
    kernels: int,
    artifacts: tuple[str, ...],
    bake_env: tuple[str, ...],
    system_packages: tuple[str, ...],
) -> Any:
    from .render import Artifact, BuildOptions

    for e in bake_env:
        if "=" not in e:
            raise click.BadParameter(f"{e!r} is not NAME=VALUE", param_hint="--env")
    return BuildOptions(
        backend=backend,  # type: ignore[arg-type]  # click.Choice has checked it
        base=base,
        gpu=gpu,
        pip_settings=not no_pip_settings,
        wheelhouse=Path(wheelhouse) if wheelhouse else None,
        watchdog_image=watchdog_image,
        kernels=kernels,
        artifacts=tuple(Artifact.parse(a) for a in artifacts),
        env=tuple((k, v) for k, _, v in (e.partition("=") for e in bake_env)),
        system_packages=system_packages,
    )


def _image_options(f: Any) -> Any:
    for option in reversed(
        [
            _kind,
            click.option(
                "--backend",
                type=click.Choice(["kernel-gateway", "openfaas"]),
                default="kernel-gateway",
                show_default=True,
            ),
            click.option("--base", help="Base image: one made by `nb2svc base build`, or any with Python 3.11+."),
            click.option("--gpu", is_flag=True, help="Build on the CUDA base (nb2svc/base:cuda)."),
            click.option("--wheelhouse", type=click.Path(file_okay=False, exists=True), help="Wheels for pip."),
            click.option("--no-pip-settings", is_flag=True, help="Don't hand the host's pip.conf and CA to pip."),
            click.option("--watchdog-image", help="openfaas: an image holding /fwatchdog (of-watchdog)."),
            click.option(
                "--artifact",
                "artifacts",
                multiple=True,
                metavar="SRC[:DEST]",
                help="Bake a file or folder (model weights) into a layer of its own; "
                "DEST defaults to /srv/nb2svc/artifacts/NAME.",
            ),
            click.option(
                "--env",
                "bake_env",
                multiple=True,
                metavar="NAME=VALUE",
                help="Set in the image, e.g. where the notebook finds its artifact.",
            ),
            click.option(
                "--system-package",
                "system_packages",
                multiple=True,
                metavar="PKG",
                help="An apt package the notebook needs (besides metadata.nb2svc.system_packages).",
            ),
            click.option(
                "--kernels",
                default=1,
                show_default=True,
                type=click.IntRange(1, 64),
                help="kernel-gateway: prespawned kernels (concurrent requests).",
            ),
        ]
    ):
        f = option(f)
    return f


_progress_option = click.option(
    "--progress/--quiet", "show_progress", default=True, show_default=True, help="Show the Docker log on stderr."
)


def _progress(show_progress: bool) -> Any:
    console = Console(stderr=True, highlight=False)

    def show(line: str) -> None:
        if show_progress:
            # soft_wrap: a log line is one line in a file or CI log, not cut at 80 columns
            console.print(escape(line), style="dim" if line.startswith(" ---> ") else None, soft_wrap=True)

    return show


@main.command()
@click.argument("notebook", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder to write (emptied).")
@click.option("-t", "--tag", default="", help="The image name stack.yml refers to.")
@_image_options
def render(notebook: str, output: str, tag: str, kind: str | None, **options: Any) -> None:
    """Write the build context: exactly what `build` sends to Docker."""
    from .render import render as render_context

    context = render_context(inspect_notebook(notebook, kind), Path(output), _build_options(**options), tag)
    click.echo(f"{context.path} (content {context.content_hash[:12]})")


@main.command()
@click.argument("notebook", type=click.Path(dir_okay=False))
@click.option("-t", "--tag", required=True, help="Image reference, e.g. 127.0.0.1:5000/team/iris:v1.")
@_image_options
@click.option("--push", "do_push", is_flag=True, help="Push after building.")
@click.option("--no-cache", is_flag=True, help="Rebuild every layer.")
@click.option("--build-arg", "build_args", multiple=True, metavar="K=V", help="Passed to the Dockerfile.")
@_progress_option
def build(
    notebook: str,
    tag: str,
    kind: str | None,
    do_push: bool,
    no_cache: bool,
    build_args: tuple[str, ...],
    show_progress: bool,
    **options: Any,
) -> None:
    """Build the notebook's image (and push it with --push)."""
    import tempfile

    from .build import build as build_image
    from .build import push as push_image
    from .render import render as render_context

    args = dict(a.partition("=")[::2] for a in build_args)
    progress = _progress(show_progress)
    with tempfile.TemporaryDirectory(prefix="nb2svc-context-") as tmp:
        context = render_context(inspect_notebook(notebook, kind), Path(tmp), _build_options(**options), tag)
        image = build_image(context, tag, no_cache=no_cache, build_args=args, progress=progress)
    click.echo(f"{image.ref} {image.id[:19]}" + (" (unchanged)" if image.cached else ""))
    if do_push:
        click.echo(push_image(tag, progress=progress))


@main.command()
@click.argument("ref")
@_progress_option
def push(ref: str, show_progress: bool) -> None:
    """Push an image; prints repository@sha256:digest."""
    from .build import push as push_image

    click.echo(push_image(ref, progress=_progress(show_progress)))


@main.command()
@click.argument("ref")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port on 127.0.0.1.")
@click.option(
    "--gpus/--no-gpus",
    default=None,
    help="Give the container every GPU (--gpus all). Default: when the image was built for a GPU.",
)
@click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="NB2SVC_* settings and the like.")
@click.option(
    "--timeout", default=120.0, show_default=True, type=click.FloatRange(1), help="Seconds to wait for /health."
)
@click.option("--rm", "remove", is_flag=True, help="Remove the container when it stops.")
@click.option(
    "-v",
    "--volume",
    "volumes",
    multiple=True,
    metavar="SRC:DEST",
    help="Mount a host folder or a volume, e.g. runs/:/var/lib/nb2svc/runs to keep training runs.",
)
def run(
    ref: str,
    port: int,
    gpus: bool | None,
    env: tuple[str, ...],
    timeout: float,
    remove: bool,
    volumes: tuple[str, ...],
) -> None:
    """Start an image, wait until it is healthy, print its URL."""
    from .build import run as run_image

    mounts: dict[str, str] = {}
    for v in volumes:
        src, sep, dst = v.rpartition(":")
        if not sep or not src or not dst.startswith("/"):
            raise click.BadParameter(f"{v!r} is not SRC:/path/in/container", param_hint="--volume")
        mounts[os.path.abspath(src) if "/" in src or src.startswith(".") else src] = dst
    running = run_image(
        ref,
        port=port,
        gpus=gpus,
        env=dict(e.partition("=")[::2] for e in env),
        timeout=timeout,
        remove=remove,
        volumes=mounts,
    )
    click.echo(running.url)
    click.echo(f"container {running.container_id[:12]} (docker stop {running.container_id[:12]})", err=True)


@main.group()
def base() -> None:
    """The base image every function builds on."""


@base.command("build")
@click.option("--from", "from_image", help="Starting image: a CUDA runtime (default) or any Debian/Ubuntu.")
@click.option("-t", "--tag", default="nb2svc/base:cpu", show_default=True)
@click.option("--wheelhouse", type=click.Path(file_okay=False, exists=True))
@click.option("--no-pip-settings", is_flag=True)
@_progress_option
def base_build(
    from_image: str | None, tag: str, wheelhouse: str | None, no_pip_settings: bool, show_progress: bool
) -> None:
    """Build the base image from Dockerfile.base-cuda."""
    from .image import DEFAULT_BASE_IMAGE, build_base, connect

    image_id = build_base(
        connect(),
        tag,
        from_image or DEFAULT_BASE_IMAGE,
        pip_settings=not no_pip_settings,
        wheelhouse=Path(wheelhouse) if wheelhouse else None,
        progress=_progress(show_progress),
    )
    click.echo(f"{tag} {image_id[:19]}")


@main.command()
@click.option("--since", metavar="REV", help="Only notebooks changed since REV (plus the content-hash check).")
@click.option("--dry-run", is_flag=True, help="Say what would be built; build and push nothing.")
@click.option("--repo", default=".", show_default=True, type=click.Path(file_okay=False, exists=True))
@click.option("--branch", help="The branch to tag (default: the checked-out one; hooks pass it on a detached HEAD).")
@_progress_option
def publish(since: str | None, dry_run: bool, repo: str, branch: str | None, show_progress: bool) -> None:
    """Build and push the notebooks nb2svc.yaml names whose image the registry does not have yet.

    Exit code: 0 none failed, 1 a notebook or nb2svc.yaml is wrong, 3 Docker or the registry failed.
    """
    from .publish import publish as publish_repo

    report = publish_repo(repo, since, dry_run=dry_run, progress=_progress(show_progress), branch=branch)
    for line in report.lines():
        click.echo(line)
    if report.exit_code:
        sys.exit(report.exit_code)


@main.group()
def hook() -> None:
    """Git hooks that publish on push (client: pre-push; server: post-receive)."""


@hook.command("install")
@click.option("--server", is_flag=True, help="post-receive in a bare repository (else pre-push in a clone).")
@click.option("--force", is_flag=True, help="Replace an existing hook (kept as <hook>.nb2svc-backup).")
@click.option("--repo", default=".", show_default=True, type=click.Path(file_okay=False, exists=True))
def hook_install(server: bool, force: bool, repo: str) -> None:
    """Install nb2svc's git hook."""
    from .hooks import install

    change = install(repo, server=server, force=force)
    click.echo(f"installed {change.path}")
    if change.backup:
        click.echo(f"the hook that was there is kept as {change.backup}")
    if server:
        click.echo("pushes to the default branch are published; skip one with: git push -o nb2svc.skip")
    else:
        click.echo("each push publishes first; skip on purpose with: NB2SVC_SKIP_HOOK=1 git push")


@hook.command("uninstall")
@click.option("--server", is_flag=True, help="The post-receive hook of a bare repository.")
@click.option("--repo", default=".", show_default=True, type=click.Path(file_okay=False, exists=True))
def hook_uninstall(server: bool, repo: str) -> None:
    """Remove nb2svc's git hook (and put back the one it replaced)."""
    from .hooks import uninstall

    change = uninstall(repo, server=server)
    click.echo(f"removed {change.path}" + (" (the earlier hook is back)" if change.backup else ""))


if __name__ == "__main__":
    sys.exit(main())
