"""Compile-side commands: inspect a notebook, serve it without an image, call a service."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..client import Client
from ..openapi import openapi_document
from ..spec import ServiceSpec, inspect_notebook
from ._base import kind_option, main, print_table


def _show(spec: ServiceSpec) -> None:
    console = Console()
    if not console.is_terminal:  # piped: don't wrap types and defaults at 80 columns
        console.width = 160
    console.print(f"[bold]{spec.notebook.name}[/]  kind: {spec.kind}  sha256: {spec.sha256[:12]}")
    cells = f"setup cells {[c.number for c in spec.setup_cells]}, parameters cell {spec.parameters_cell.number}"
    console.print(cells + (f", outputs cell {spec.outputs_cell.number}" if spec.outputs_cell else ""))
    table = Table()
    for col in ("name", "type", "default", "required", "help"):
        table.add_column(col)
    for p in spec.parameters:
        default = json.dumps(p.default) if p.has_default else f"= {p.default_source}"
        table.add_row(p.name, escape(p.type.python()), escape(default), "yes" if p.required else "", escape(p.help))
    print_table(console, "Parameters", table)
    if spec.outputs:
        out = Table()
        for col in ("name", "type", "help"):
            out.add_column(col)
        for o in spec.outputs:
            out.add_row(o.name, escape(o.type.python()), escape(o.help))
        print_table(console, "Outputs", out)
    if spec.requirements:
        console.print("requirements: " + escape(" ".join(spec.requirements)))
    if spec.system_packages:
        console.print("system packages: " + escape(" ".join(spec.system_packages)))


@main.command()
@click.argument("notebook", type=click.Path(dir_okay=False))
@kind_option
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
@kind_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
def serve(notebook: str, kind: str | None, host: str, port: int) -> None:
    """Serve a notebook locally (no container); settings from NB2SVC_* variables."""
    from ..runtime import serve as run_service  # the runtime is only imported where it is needed

    spec = inspect_notebook(notebook, kind)
    run_service(
        spec,
        host=host,
        port=port,
        announce=lambda url: click.echo(f"serving {spec.name} ({spec.kind}) on {url}", err=True),
    )


def _not_json(token: str) -> Any:
    raise json.JSONDecodeError(f"{token} is not JSON", token, 0)


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
            values = json.loads(body, parse_constant=_not_json)
        except json.JSONDecodeError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="--json") from None
        if not isinstance(values, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--json")
    with Client(url, timeout=timeout) as client:
        answer = client.call(raw, values, wait=not no_wait)
    click.echo(json.dumps(answer, indent=2))
