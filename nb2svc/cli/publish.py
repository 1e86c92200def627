"""The git side: publish what changed, install and remove the hooks."""

from __future__ import annotations

import sys

import click

from ._base import main, progress_option, progress_printer


@main.command()
@click.option("--since", metavar="REV", help="Only notebooks changed since REV (plus the content-hash check).")
@click.option("--dry-run", is_flag=True, help="Say what would be built; build and push nothing.")
@click.option("--repo", default=".", show_default=True, type=click.Path(file_okay=False, exists=True))
@click.option("--branch", help="The branch to tag (default: the checked-out one; hooks pass it on a detached HEAD).")
@progress_option
def publish(since: str | None, dry_run: bool, repo: str, branch: str | None, show_progress: bool) -> None:
    """Build and push the notebooks nb2svc.yaml names whose image the registry does not have yet.

    Exit code: 0 none failed, 1 a notebook or nb2svc.yaml is wrong, 3 Docker or the registry failed.
    """
    from ..publish import publish as publish_repo

    report = publish_repo(repo, since, dry_run=dry_run, progress=progress_printer(show_progress), branch=branch)
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
    from ..hooks import install

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
    from ..hooks import uninstall

    change = uninstall(repo, server=server)
    click.echo(f"removed {change.path}" + (" (the earlier hook is back)" if change.backup else ""))
