"""Prometheus metrics of one service, in a registry of its own (several apps can share a process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..openapi import RUN_STATUSES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _RunsCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self):  # type: ignore[no-untyped-def]  # prometheus_client's own signature is untyped
        family = GaugeMetricFamily("nb2svc_runs", "Training runs by status", labels=["status"])
        counts = self._counts()
        for status in RUN_STATUSES:
            family.add_metric([status], counts.get(status, 0))
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "nb2svc_requests", "HTTP requests", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "nb2svc_request_duration_seconds",
            "Time to answer, by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.errors = Counter("nb2svc_errors", "Error answers, by error code", ["error"], registry=self.registry)

    def track_runs(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_RunsCollector(counts))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
