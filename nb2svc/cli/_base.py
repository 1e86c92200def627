"""The click group, the options commands share, and the one place exceptions become messages and exit codes.

Exit codes: 0 ok, 1 the user's input is wrong, 2 usage, 3 an external system failed.
"""

from __future__ import annotations

import traceback
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..errors import Nb2svcError
from ..spec import KINDS

kind_option = click.option("--kind", type=click.Choice(KINDS), help="Override metadata.nb2svc.kind.")


class Nb2svcGroup(click.Group):
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


@click.group(cls=Nb2svcGroup)
@click.version_option(__version__, prog_name="nb2svc")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Compile Jupyter notebooks into typed HTTP functions."""
    ctx.obj = {"debug": debug}


progress_option = click.option(
    "--progress/--quiet", "show_progress", default=True, show_default=True, help="Show the Docker log on stderr."
)


def progress_printer(show_progress: bool) -> Any:
    console = Console(stderr=True, highlight=False)

    def show(line: str) -> None:
        if show_progress:
            # soft_wrap: a log line is one line in a file or CI log, not cut at 80 columns
            console.print(escape(line), style="dim" if line.startswith(" ---> ") else None, soft_wrap=True)

    return show


def print_table(console: Console, title: str, table: Any) -> None:
    """A table under its title line; rich's own table title is padded with spaces to the table's width."""
    console.print(escape(title), style="italic", highlight=False, soft_wrap=True)
    console.print(table)
