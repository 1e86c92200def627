"""The report as an HTML page a person reads: per column the reference and current distributions side by side
(inline SVG histograms, no script), the test and its verdict. The page is a Jinja2 template (report.html.j2)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import jinja2
import numpy as np

from .columns import Column
from .report import Report

_BINS = 20
_W, _H = 260, 90


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True)
class Chart:
    bars: tuple[Bar, ...]
    low: str
    high: str
    n: int


def _numeric(ref: Column, cur: Column) -> tuple[Chart, Chart]:
    both = np.asarray(ref.values + cur.values, dtype=float)
    low, high = float(both.min()), float(both.max())
    if high == low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, _BINS + 1)

    def chart(col: Column) -> Chart:
        counts, _ = np.histogram(np.asarray(col.values, dtype=float), bins=edges)
        share = counts / max(1, counts.sum())
        top = max(share.max(), 1e-9)
        w = _W / _BINS
        bars = tuple(
            Bar(i * w, _H - _H * s / top, w - 1, _H * s / top, f"{edges[i]:.3g} to {edges[i + 1]:.3g}: {c}")
            for i, (c, s) in enumerate(zip(counts, share, strict=True))
        )
        return Chart(bars, f"{low:.3g}", f"{high:.3g}", len(col.values))

    return chart(ref), chart(cur)


def _categorical(ref: Column, cur: Column) -> tuple[Chart, Chart]:
    cats = sorted(set(ref.values) | set(cur.values))[:30]

    def chart(col: Column) -> Chart:
        n = max(1, len(col.values))
        share = [col.values.count(c) / n for c in cats]
        top = max(max(share, default=0), 1e-9)
        w = _W / max(1, len(cats))
        bars = tuple(
            Bar(i * w, _H - _H * s / top, w - 2, _H * s / top, f"{_label(c)}: {s:.0%}")
            for i, (c, s) in enumerate(zip(cats, share, strict=True))
        )
        return Chart(bars, _label(cats[0]) if cats else "", _label(cats[-1]) if cats else "", len(col.values))

    return chart(ref), chart(cur)


def _label(text: str) -> str:
    value = json.loads(text)
    return value if isinstance(value, str) else text


def render_html(report: Report) -> str:
    rows = []
    for name, drift in report.parameters.items():
        ref, cur = report.reference[name], report.current[name]
        charts = _numeric(ref, cur) if ref.kind == "numeric" else _categorical(ref, cur)
        rows.append({"name": name, "drift": drift, "reference": charts[0], "current": charts[1], "kind": ref.kind})
    template = resources.files(__package__).joinpath("report.html.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(report=report.as_json(), rows=rows, width=_W, height=_H)
