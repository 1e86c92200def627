"""One drift test per column, chosen by its kind and the reference's size, from scipy.stats (Evidently's defaults).

| column | reference ≤ 1000 values | larger reference |
|---|---|---|
| numbers | two-sample Kolmogorov-Smirnov, drift when p < 0.05 | Wasserstein distance / reference std ≥ 0.1 |
| categories (Literal, bool, str) | chi-squared of the counts, p < 0.05 | Jensen-Shannon distance ≥ 0.1 |
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial import distance

from .columns import Column

SMALL = 1000  # reference size up to which the tests with a p-value are used
P_VALUE = 0.05
DISTANCE = 0.1


@dataclass(frozen=True)
class Drift:
    test: str  # ks, wasserstein, chi_squared, jensen_shannon
    statistic: float
    p_value: float | None
    drift: bool
    n_reference: int
    n_current: int

    def as_json(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "statistic": _finite(self.statistic),
            "p_value": None if self.p_value is None else _finite(self.p_value),
            "drift": self.drift,
            "n_reference": self.n_reference,
            "n_current": self.n_current,
        }


def _finite(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


def test(reference: Column, current: Column) -> Drift | None:
    """The drift of ``current`` from ``reference``; None when either holds no value."""
    ref, cur = reference.values, current.values
    if not ref or not cur:
        return None
    n, m = len(ref), len(cur)
    if reference.kind == "numeric":
        a, b = np.asarray(ref, dtype=float), np.asarray(cur, dtype=float)
        if n <= SMALL:
            r = stats.ks_2samp(a, b)
            return Drift("ks", float(r.statistic), float(r.pvalue), bool(r.pvalue < P_VALUE), n, m)
        std = float(np.std(a))
        # a constant reference: the raw distance (any change from the constant is a change)
        d = float(stats.wasserstein_distance(a, b)) / (std if std > 0 else 1.0)
        return Drift("wasserstein", d, None, d >= DISTANCE, n, m)
    counts_ref, counts_cur = Counter(ref), Counter(cur)
    categories = sorted(set(counts_ref) | set(counts_cur))
    if n <= SMALL:
        if len(categories) < 2:  # one value only, on both sides: nothing can have changed
            return Drift("chi_squared", 0.0, 1.0, False, n, m)
        table = np.array([[counts_ref[c] for c in categories], [counts_cur[c] for c in categories]])
        r = stats.chi2_contingency(table)
        return Drift("chi_squared", float(r.statistic), float(r.pvalue), bool(r.pvalue < P_VALUE), n, m)
    p = np.array([counts_ref[c] / n for c in categories])
    q = np.array([counts_cur[c] / m for c in categories])
    d = float(distance.jensenshannon(p, q))
    return Drift("jensen_shannon", d, None, d >= DISTANCE, n, m)
