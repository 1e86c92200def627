"""Discovery: `nb2svc models` lists what a registry's images declare, without pulling them."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..deploy.catalog import ModelRow, list_models, split_location
from ..deploy.labels import Declared, ImageResources
from ..spec import KINDS
from ._base import main, print_table


def _declared(items: tuple[Declared, ...]) -> str:
    return "\n".join(escape(f"{d.name}: {d.type}") for d in items)


def _resources(r: ImageResources) -> str:
    parts = [f"cpu {r.cpu}" if r.cpu else "", f"memory {r.memory}" if r.memory else "", "gpu" if r.gpu else ""]
    parts.append(f"timeout {r.timeout:g}s" if r.timeout else "")
    return escape("\n".join(p for p in parts if p))


def _card(card: Any) -> str:
    return "\n".join(escape(f"{k}: {v if isinstance(v, str) else json.dumps(v)}") for k, v in card.items())


def _show(location: str, rows: list[ModelRow]) -> None:
    console = Console()
    if not console.is_terminal:  # piped: don't wrap types and card fields at 80 columns
        console.width = 160
    title = f"{location}: {len(rows)} image{'' if len(rows) == 1 else 's'}"
    table = Table(show_lines=True)
    for col in ("image", "kind", "parameters", "outputs", "resources", "notebook", "commit", "card"):
        table.add_column(col, overflow="fold", no_wrap=col in ("commit",))
    path = split_location(location)[1]
    for row in rows:
        # named from below the location on, as the title gives the rest
        name = row.repository.rsplit("/", 1)[-1] if row.repository == path else row.repository
        image = escape(f"{name.removeprefix(path + '/')}:{row.tag}")
        if not row.nb2svc:
            table.add_row(image, "[dim]-[/]", "", "", "", "", "", f"[dim]{escape(row.note)}[/]")
            continue
        notebook = escape(f"{row.notebook or ''} {(row.notebook_sha256 or '')[:12]}".strip())
        table.add_row(
            image,
            escape(f"{row.kind}\n{row.backend}" if row.backend else str(row.kind)),
            _declared(row.parameters),
            _declared(row.outputs),
            _resources(row.resources),
            notebook,
            escape((row.commit or "")[:12]),
            _card(row.card),
        )
    print_table(console, title, table)


@main.command()
@click.argument("location", metavar="REGISTRY[/REPO]")
@click.option("--kind", type=click.Choice(KINDS), help="Only images of this kind.")
@click.option("--param", metavar="NAME", help="Only images that take a parameter of this name.")
@click.option("--gpu/--no-gpu", default=None, help="Only images that ask for a GPU (or only those that don't).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON list, every field.")
def models(location: str, kind: str | None, param: str | None, gpu: bool | None, as_json: bool) -> None:
    """List the images at REGISTRY (its whole catalog) or REGISTRY/REPO (that repository and those under REPO/),
    with what their labels declare; read through the registry's API, nothing is pulled.

    Images that are not nb2svc's are listed with a note; a filter keeps nb2svc images only."""
    rows = list_models(location, kind=kind, param=param, gpu=gpu)
    if as_json:
        click.echo(json.dumps([row.to_dict() for row in rows], indent=2))
    elif rows:
        _show(location, rows)
    else:
        filtered = kind or param or gpu is not None
        click.echo(f"no {'matching ' if filtered else ''}images at {location}", err=True)
