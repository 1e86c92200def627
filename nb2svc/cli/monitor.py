"""``nb2svc monitor``: drift, performance and the retrain rule over a prediction log (SPEC section 8)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import click

from ._base import main


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A YAML file with a `monitor:` key (default: ./nb2svc.yaml when there is one).",
)
@click.option("--log", "log_url", help="The prediction log: sqlite:///PATH or postgresql://... (monitor.log).")
@click.option("--name", help="The service, when the log holds several.")
@click.option("--reference", help="first:N, or a training run's profile: URL/runs/ID (monitor.reference).")
@click.option("--window", type=click.IntRange(1), help="The most recent N predictions (monitor.window).")
@click.option("--every", help="How often to report and apply the rule: 60s, 5m, 1h (monitor.every).")
@click.option("--once", is_flag=True, help="Make one report (and apply the rule once), then exit.")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the report as JSON.")
@click.option("--port", type=click.IntRange(0, 65535), help="Serve /report, /report.html and /metrics here.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--dry-run", is_flag=True, help="Say what the retrain rule would do; start nothing.")
def monitor(
    config_file: Path | None,
    log_url: str | None,
    name: str | None,
    reference: str | None,
    window: int | None,
    every: str | None,
    once: bool,
    as_json: bool,
    port: int | None,
    host: str,
    dry_run: bool,
) -> None:
    """Watch a service's predictions: drift per parameter, performance from feedback, retraining."""
    from ..monitor import Monitor, create_app, load  # scipy and numpy only where monitor runs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = load(config_file).with_flags(log=log_url, name=name, reference=reference, window=window, every=every)
    mon = Monitor(config, dry_run=dry_run)
    if once or port is None:
        report = mon.once()
        if as_json:
            click.echo(json.dumps(report.as_json(), indent=2))
        else:
            _summary(report.as_json())
        return
    import uvicorn

    from ..runtime import server

    stop = threading.Event()
    loop = threading.Thread(target=mon.run_forever, args=(stop,), name="nb2svc-monitor", daemon=True)
    loop.start()
    sock = server.bind(host, port)
    click.echo(f"monitor on http://{host}:{sock.getsockname()[1]}/report.html", err=True)
    try:
        uvicorn.Server(uvicorn.Config(create_app(mon), log_level="warning", access_log=False)).run(sockets=[sock])
    finally:
        stop.set()


def _summary(report: dict[str, Any]) -> None:
    params = report["parameters"]
    click.echo(f"{report['service']}: {report['window']} predictions against {report['reference']}")
    for pname, d in params.items():
        p = "" if d["p_value"] is None else f" p={d['p_value']:.3g}"
        click.echo(f"  {pname:<24} {d['test']:<15} {d['statistic']}{p}  {'DRIFT' if d['drift'] else 'ok'}")
    perf = report["performance"]
    for oname, m in perf.items():
        click.echo(f"  {oname:<24} {m['metric']} {m['value']:.4g} (n={m['n']})")
    if report.get("retrain"):
        click.echo(f"  retrain: {json.dumps(report['retrain'])}")
