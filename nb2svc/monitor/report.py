"""One monitoring pass: the reference and the window read from the log, a drift test per column, performance
from feedback. :func:`make_report` returns a :class:`Report`; its ``as_json`` is what ``--once --json`` prints."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import ExternalError
from ..runtime.predictions import LoggedPrediction, PredictionLog
from ..types import ListOf, Scalar, Type, type_from_json
from ..types import Literal as LiteralType
from ..types import Optional as OptionalType
from .columns import Column, parameter_columns, profile_columns
from .config import MonitorConfig, MonitorConfigError
from .drift import Drift, test


@dataclass(frozen=True)
class Service:
    name: str
    parameters: Mapping[str, Type]
    outputs: Mapping[str, Type]
    image: str


@dataclass(frozen=True)
class Performance:
    metric: str  # accuracy or mae
    value: float
    n: int

    def as_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": round(self.value, 6), "n": self.n}


@dataclass(frozen=True)
class Report:
    service: Service
    reference_source: str
    reference: Mapping[str, Column]
    current: Mapping[str, Column]
    parameters: Mapping[str, Drift]
    performance: Mapping[str, Performance]
    window: int  # predictions in the window
    made_at: float = field(default_factory=time.time)
    retrain: Mapping[str, Any] | None = None

    @property
    def drifted(self) -> list[str]:
        return [name for name, d in self.parameters.items() if d.drift]

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service.name,
            "image": self.service.image,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.made_at)),
            "reference": {
                "source": self.reference_source,
                "n": max((len(c.values) for c in self.reference.values()), default=0),
            },
            "window": self.window,
            "drifted": self.drifted,
            "parameters": {name: d.as_json() for name, d in self.parameters.items()},
            "performance": {name: p.as_json() for name, p in self.performance.items()},
            "retrain": dict(self.retrain) if self.retrain is not None else None,
        }


def find_service(log: PredictionLog, name: str | None) -> Service:
    """The service the log holds (``name`` when it holds several), typed from what it stored at its start."""
    if name is None:
        names = log.services()
        if not names:
            raise MonitorConfigError("the prediction log holds no predictions yet", "send the service some requests")
        if len(names) > 1:
            raise MonitorConfigError(
                f"the prediction log holds several services: {', '.join(names)}", "pick one with --name"
            )
        name = names[0]
    raw = log.get_meta(f"service:{name}")
    if raw is None:
        raise MonitorConfigError(f"the prediction log knows no service {name!r}", "check --name")
    meta = json.loads(raw)
    return Service(
        name=name,
        parameters={p["name"]: type_from_json(p["type"]) for p in meta["parameters"]},
        outputs={o["name"]: type_from_json(o["type"]) for o in meta["outputs"]},
        image=str(meta.get("image", "")),
    )


def reference_columns(log: PredictionLog, service: Service, source: str) -> dict[str, Column]:
    """``first:N`` (the first N predictions) or ``URL/runs/ID`` (that training run's ``profile.json``)."""
    if source.startswith("first:"):
        try:
            n = int(source.partition(":")[2])
        except ValueError:
            n = 0
        if n < 1:
            raise MonitorConfigError(f"reference {source!r}: N must be a positive number", "e.g. first:1000")
        return parameter_columns(service.parameters, [r.parameters for r in log.read(service.name, first=n)])
    if source.startswith(("http://", "https://")) and "/runs/" in source:
        url = source.rstrip("/") + "/artifacts/profile.json"
        try:
            r = httpx.get(url, timeout=30)
        except httpx.HTTPError as e:
            raise ExternalError(f"cannot fetch the reference profile {url}: {e}") from None
        if r.status_code != 200:
            raise ExternalError(
                f"the reference profile {url} answered {r.status_code}",
                "the training notebook writes it with nb2svc.profile.write_profile(..., artifacts / 'profile.json')",
            )
        profile = r.json()
        return profile_columns(service.parameters, profile.get("columns", {}))
    raise MonitorConfigError(f"reference {source!r} is not one nb2svc knows", "use first:N or URL/runs/ID")


def performance(outputs: Mapping[str, Type], rows: Sequence[LoggedPrediction]) -> dict[str, Performance]:
    """Accuracy for discrete outputs (int, str, bool, Literal), mean absolute error for floats; lists element-wise."""
    out: dict[str, Performance] = {}
    for name, t in outputs.items():
        metric = _metric(t)
        if metric is None:
            continue
        pairs: list[tuple[Any, Any]] = []
        for row in rows:
            if row.truth is None or name not in row.truth or name not in row.outputs:
                continue
            pairs += _pairs(row.outputs[name], row.truth[name])
        pairs = [(p, t_) for p, t_ in pairs if p is not None and t_ is not None]
        if not pairs:
            continue
        if metric == "accuracy":
            value = sum(p == t_ for p, t_ in pairs) / len(pairs)
        else:
            value = sum(abs(float(p) - float(t_)) for p, t_ in pairs) / len(pairs)
        out[name] = Performance(metric, value, len(pairs))
    return out


def _metric(t: Type) -> str | None:
    while isinstance(t, OptionalType | ListOf):
        t = t.inner if isinstance(t, OptionalType) else t.item
    if t == Scalar("float"):
        return "mae"
    if isinstance(t, LiteralType) or t in (Scalar("int"), Scalar("str"), Scalar("bool")):
        return "accuracy"
    return None


def _pairs(predicted: Any, truth: Any) -> list[tuple[Any, Any]]:
    if isinstance(predicted, list) and isinstance(truth, list):
        if len(predicted) != len(truth):
            return []  # a truth of another length says nothing about which element is which
        return [pair for p, t in zip(predicted, truth, strict=True) for pair in _pairs(p, t)]
    return [(predicted, truth)]


def make_report(log: PredictionLog, config: MonitorConfig) -> Report:
    service = find_service(log, config.name)
    reference = reference_columns(log, service, config.reference)
    window = log.read(service.name, last=config.window)
    current = parameter_columns(service.parameters, [r.parameters for r in window])
    drifts: dict[str, Drift] = {}
    for name, ref in reference.items():
        cur = current.get(name)
        if cur is not None and (d := test(ref, cur)) is not None:
            drifts[name] = d
    fed_back = log.read(service.name, last=config.window, with_truth=True)
    return Report(
        service=service,
        reference_source=config.reference,
        reference=reference,
        current=current,
        parameters=drifts,
        performance=performance(service.outputs, fed_back),
        window=len(window),
    )
