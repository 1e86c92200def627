"""Prometheus metrics of one service, in a registry of its own (several apps can share a process)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..openapi import RUN_STATUSES

if TYPE_CHECKING:
    from .predictions.recorder import Recorder

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


class _PredictionLogCollector(Collector):
    """The prediction log's counters, kept by the recorder (its writer thread updates them)."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def collect(self):  # type: ignore[no-untyped-def]  # prometheus_client's own signature is untyped
        r = self._recorder
        written = CounterMetricFamily("nb2svc_predictions_logged", "Predictions written to the prediction log")
        written.add_metric([], r.written)
        yield written
        dropped = CounterMetricFamily(
            "nb2svc_predictions_dropped",
            "Predictions not logged: buffer full, too large, failed writes, left at shutdown",
            labels=["reason"],
        )
        for reason, n in sorted(r.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        queued = GaugeMetricFamily("nb2svc_prediction_log_queued", "Predictions waiting in the buffer")
        queued.add_metric([], r.queued)
        yield queued
        up = GaugeMetricFamily("nb2svc_prediction_log_up", "1 while the writer is connected to the log")
        up.add_metric([], 1 if r.connected else 0)
        yield up


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
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def track_runs(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_RunsCollector(counts))

    def track_predictions(self, recorder: Recorder) -> None:
        self.registry.register(_PredictionLogCollector(recorder))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:  # labels() checks and locks on every call: look each series up once
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
