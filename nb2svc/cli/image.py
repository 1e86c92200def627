"""Image commands: render the build context, build, push, run, and the base image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from ..spec import inspect_notebook
from ._base import kind_option, main, progress_option, progress_printer


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
    from ..render import Artifact, BuildOptions

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
            kind_option,
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


@main.command()
@click.argument("notebook", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder to write (emptied).")
@click.option("-t", "--tag", default="", help="The image name stack.yml refers to.")
@_image_options
def render(notebook: str, output: str, tag: str, kind: str | None, **options: Any) -> None:
    """Write the build context: exactly what `build` sends to Docker."""
    from ..render import render as render_context

    context = render_context(inspect_notebook(notebook, kind), Path(output), _build_options(**options), tag)
    click.echo(f"{context.path} (content {context.content_hash[:12]})")


@main.command()
@click.argument("notebook", type=click.Path(dir_okay=False))
@click.option("-t", "--tag", required=True, help="Image reference, e.g. 127.0.0.1:5000/team/iris:v1.")
@_image_options
@click.option("--push", "do_push", is_flag=True, help="Push after building.")
@click.option("--no-cache", is_flag=True, help="Rebuild every layer.")
@click.option("--build-arg", "build_args", multiple=True, metavar="K=V", help="Passed to the Dockerfile.")
@progress_option
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

    from ..build import build as build_image
    from ..build import push as push_image
    from ..render import render as render_context

    args = dict(a.partition("=")[::2] for a in build_args)
    progress = progress_printer(show_progress)
    with tempfile.TemporaryDirectory(prefix="nb2svc-context-") as tmp:
        context = render_context(inspect_notebook(notebook, kind), Path(tmp), _build_options(**options), tag)
        image = build_image(context, tag, no_cache=no_cache, build_args=args, progress=progress)
    click.echo(f"{image.ref} {image.id[:19]}" + (" (unchanged)" if image.cached else ""))
    if do_push:
        click.echo(push_image(tag, progress=progress))


@main.command()
@click.argument("ref")
@progress_option
def push(ref: str, show_progress: bool) -> None:
    """Push an image; prints repository@sha256:digest."""
    from ..build import push as push_image

    click.echo(push_image(ref, progress=progress_printer(show_progress)))


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
    from ..build import run as run_image

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
@progress_option
def base_build(
    from_image: str | None, tag: str, wheelhouse: str | None, no_pip_settings: bool, show_progress: bool
) -> None:
    """Build the base image from Dockerfile.base-cuda."""
    from ..image import DEFAULT_BASE_IMAGE, build_base, connect

    image_id = build_base(
        connect(),
        tag,
        from_image or DEFAULT_BASE_IMAGE,
        pip_settings=not no_pip_settings,
        wheelhouse=Path(wheelhouse) if wheelhouse else None,
        progress=progress_printer(show_progress),
    )
    click.echo(f"{tag} {image_id[:19]}")
