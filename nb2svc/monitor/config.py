"""The ``monitor:`` key of ``nb2svc.yaml`` (or ``--config FILE``), each key also a flag (SPEC section 8)."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..errors import Nb2svcError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_RULE = re.compile(r"(?:(\w+)\.)?(accuracy|mae)\s*(<=|>=|<|>)\s*(-?\d+(?:\.\d+)?)")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_KEYS = ("log", "name", "reference", "window", "every", "retrain")
_RETRAIN_KEYS = ("when", "training", "parameters", "cooldown", "timeout", "deploy")
_DEPLOY_KEYS = ("name", "artifact", "notebook", "image", "base", "dest", "env", "backend", "engine")


class MonitorConfigError(Nb2svcError):
    """The monitor's configuration is wrong (exit 1)."""


def duration(value: Any, key: str) -> float:
    """``60``, ``"60s"``, ``"5m"``, ``"1h"`` → seconds."""
    m = _DURATION.fullmatch(str(value).strip())
    if not m or float(m.group(1)) <= 0:
        raise MonitorConfigError(f"monitor.{key}: {value!r} is not a duration", "e.g. 60s, 5m, 1h")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Rule:
    """``drift`` (on any parameter), or a bound on performance: ``accuracy < 0.9``, ``label.accuracy < 0.9``."""

    text: str
    metric: str | None = None  # None: drift
    output: str | None = None  # None: any output with that metric
    op: str = "<"
    bound: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Rule:
        text = str(text).strip()
        if text == "drift":
            return cls(text)
        m = _RULE.fullmatch(text)
        if not m:
            raise MonitorConfigError(
                f"monitor.retrain.when: {text!r} is not a rule nb2svc knows",
                'use drift, or a bound such as "accuracy < 0.9", "label.accuracy < 0.9", "mae > 2.5"',
            )
        return cls(text, m.group(2), m.group(1), m.group(3), float(m.group(4)))

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.bound)


@dataclass(frozen=True)
class DeployConfig:
    name: str  # the deployment to roll (nb2svc deploy --name)
    notebook: Path  # the serving notebook the image is built from
    image: str  # the repository: built as IMAGE:retrain-RUNID and pushed
    artifact: str = ""  # the run's artifact path (a folder like model/, or a file) baked into the image
    dest: str = "/srv/nb2svc/artifacts/model"  # where it goes in the image
    base: str | None = None
    backend: str = "kernel-gateway"
    env: Mapping[str, str] = field(default_factory=dict)  # baked into the image (e.g. CLASSIFIER_MODEL_DIR)
    engine: str = "swarm"


@dataclass(frozen=True)
class RetrainConfig:
    when: Rule
    training: str  # the training function's URL
    parameters: Mapping[str, Any] = field(default_factory=dict)
    cooldown: float = 3600.0
    timeout: float = 3600.0  # how long a run may take before it is given up on
    deploy: DeployConfig | None = None


@dataclass(frozen=True)
class MonitorConfig:
    log: str
    reference: str = "first:1000"
    window: int = 500
    every: float = 60.0
    name: str | None = None  # the service, when the log holds several
    retrain: RetrainConfig | None = None

    def with_flags(self, **flags: Any) -> MonitorConfig:
        given = {k: v for k, v in flags.items() if v is not None}
        if "every" in given:
            given["every"] = duration(given["every"], "every")
        return replace(self, **given)


def _mapping(value: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MonitorConfigError(f"{key} must be a mapping")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise MonitorConfigError(f"{key}: unknown key {unknown[0]!r}", f"keys: {', '.join(allowed)}")
    return value


def parse(data: Any, base: Path = Path(".")) -> MonitorConfig:
    """A ``monitor:`` mapping → :class:`MonitorConfig` (``base``: where relative notebook paths start)."""
    m = _mapping(data or {}, "monitor", _KEYS)
    retrain = None
    if m.get("retrain"):
        r = _mapping(m["retrain"], "monitor.retrain", _RETRAIN_KEYS)
        if "training" not in r:
            raise MonitorConfigError("monitor.retrain needs `training:` (the training function's URL)")
        deploy = None
        if r.get("deploy"):
            d = _mapping(r["deploy"], "monitor.retrain.deploy", _DEPLOY_KEYS)
            missing = [k for k in ("name", "notebook", "image") if k not in d]
            if missing:
                raise MonitorConfigError(
                    f"monitor.retrain.deploy needs {', '.join(missing)}",
                    "name: the deployment; notebook: the serving notebook; image: the repository to push to",
                )
            deploy = DeployConfig(
                name=str(d["name"]),
                notebook=base / str(d["notebook"]),
                image=str(d["image"]),
                artifact=str(d.get("artifact", "")),
                dest=str(d.get("dest", DeployConfig.dest)),
                base=d.get("base"),
                backend=str(d.get("backend", "kernel-gateway")),
                env={str(k): str(v) for k, v in (d.get("env") or {}).items()},
                engine=str(d.get("engine", "swarm")),
            )
        retrain = RetrainConfig(
            when=Rule.parse(r.get("when", "drift")),
            training=str(r["training"]).rstrip("/"),
            parameters=dict(r.get("parameters") or {}),
            cooldown=duration(r.get("cooldown", "1h"), "retrain.cooldown"),
            timeout=duration(r.get("timeout", "1h"), "retrain.timeout"),
            deploy=deploy,
        )
    window = m.get("window", 500)
    if not isinstance(window, int) or window < 1:
        raise MonitorConfigError(f"monitor.window: {window!r} must be a positive number of predictions")
    return MonitorConfig(
        log=str(m.get("log", "")),
        reference=str(m.get("reference", "first:1000")),
        window=window,
        every=duration(m.get("every", "60s"), "every"),
        name=m.get("name"),
        retrain=retrain,
    )


def load(path: Path | None) -> MonitorConfig:
    """The ``monitor:`` key of ``path`` (default ./nb2svc.yaml when it exists; else an empty config)."""
    if path is None:
        path = Path("nb2svc.yaml")
        if not path.is_file():
            return parse({})
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise MonitorConfigError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise MonitorConfigError(f"{path} must be a mapping with a `monitor:` key")
    return parse(data.get("monitor", {}), path.parent)
