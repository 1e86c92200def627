"""The monitor's cycle (report, then the retrain rule) and what `nb2svc monitor --port` serves."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..runtime.predictions import open_log
from .config import DeployConfig, MonitorConfig, MonitorConfigError
from .report import Report, make_report
from .retrain import Retrainer

log = logging.getLogger("nb2svc.monitor")


class Monitor:
    """Reads the log and applies the rule; ``deployer`` replaces the default build + roll-out (see retrain.py)."""

    def __init__(
        self,
        config: MonitorConfig,
        *,
        dry_run: bool = False,
        deployer: Callable[[DeployConfig, str, str], dict[str, Any]] | None = None,
    ) -> None:
        if not config.log:
            raise MonitorConfigError("no prediction log to read", "give --log sqlite:///PATH (or monitor.log)")
        self.config = config
        self.dry_run = dry_run
        self.deployer = deployer
        self.latest: Report | None = None
        self.error: str | None = None
        self.actions: Counter[str] = Counter()

    def once(self) -> Report:
        db = open_log(self.config.log)
        try:
            report = make_report(db, self.config)
            log.info(
                "report: %d predictions in the window, drift on %s",
                report.window,
                ", ".join(report.drifted) or "no parameter",
            )
            if self.config.retrain is not None:
                retrainer = Retrainer(
                    self.config.retrain, report.service.name, db, dry_run=self.dry_run, deployer=self.deployer
                )
                outcome = retrainer.apply(report)
                self.actions[outcome["action"]] += 1
                report = dataclasses.replace(report, retrain=outcome)
        finally:
            db.close()
        self.latest, self.error = report, None
        return report

    def run_forever(self, stop: threading.Event) -> None:
        """A report every ``every`` seconds until ``stop``; a failing cycle is logged and tried again."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.once()
            except Exception as e:
                self.error = str(getattr(e, "message", e))
                log.error("monitor cycle failed: %s", self.error)
            stop.wait(max(0.0, self.config.every - (time.monotonic() - started)))


class _Gauges(Collector):
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self):  # type: ignore[no-untyped-def]  # prometheus_client's own signature is untyped
        report = self.monitor.latest
        drift = GaugeMetricFamily("nb2svc_monitor_drift", "1 when the column drifted", labels=["parameter", "test"])
        stat = GaugeMetricFamily(
            "nb2svc_monitor_drift_statistic", "The drift test's statistic", labels=["parameter", "test"]
        )
        p_value = GaugeMetricFamily("nb2svc_monitor_drift_p_value", "The drift test's p-value", labels=["parameter"])
        perf = GaugeMetricFamily(
            "nb2svc_monitor_performance", "Accuracy or mean absolute error from feedback", labels=["output", "metric"]
        )
        fed = GaugeMetricFamily("nb2svc_monitor_feedback", "Compared values behind each figure", labels=["output"])
        window = GaugeMetricFamily("nb2svc_monitor_window", "Predictions in the current window")
        made = GaugeMetricFamily("nb2svc_monitor_report_timestamp_seconds", "When the latest report was made")
        if report is not None:
            for name, d in report.parameters.items():
                drift.add_metric([name, d.test], 1.0 if d.drift else 0.0)
                stat.add_metric([name, d.test], d.statistic)
                if d.p_value is not None:
                    p_value.add_metric([name], d.p_value)
            for name, p in report.performance.items():
                perf.add_metric([name, p.metric], p.value)
                fed.add_metric([name], p.n)
            window.add_metric([], report.window)
            made.add_metric([], report.made_at)
        yield from (drift, stat, p_value, perf, fed, window, made)
        actions = CounterMetricFamily("nb2svc_monitor_retrain", "Retrain rule outcomes", labels=["action"])
        for action, n in sorted(self.monitor.actions.items()):
            actions.add_metric([action], n)
        yield actions


def create_app(monitor: Monitor) -> Any:
    """The Starlette app: ``/report`` (JSON, or HTML for a browser), ``/report.html``, ``/metrics``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    from .html import render_html

    registry = CollectorRegistry()
    registry.register(_Gauges(monitor))

    def pending() -> Response:
        body = {"error": "no_report", "message": monitor.error or "the first report is being made"}
        return JSONResponse(body, 503)

    async def report(request: Request) -> Response:
        if monitor.latest is None:
            return pending()
        if "text/html" in request.headers.get("accept", "") and "json" not in request.headers.get("accept", ""):
            return HTMLResponse(render_html(monitor.latest))
        return JSONResponse(monitor.latest.as_json())

    async def report_html(request: Request) -> Response:
        if monitor.latest is None:
            return pending()
        return HTMLResponse(render_html(monitor.latest))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def root(request: Request) -> Response:
        return RedirectResponse("/report.html")

    return Starlette(
        routes=[
            Route("/", root),
            Route("/report", report),
            Route("/report.html", report_html),
            Route("/metrics", metrics),
        ]
    )
