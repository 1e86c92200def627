"""Write a training data profile for ``nb2svc monitor``: the reference its drift tests compare predictions with.

Standard library only, so a training notebook can import it in Jupyter (with nb2svc installed) and in its
image (every image carries the nb2svc package)::

    from nb2svc.profile import write_profile
    write_profile({"features[0]": x_train}, artifacts / "profile.json")   # one image = one request's features[0]

Keys name what a request sends, as the monitor names it: a parameter (``"lr"``), or a position in a list
parameter (``"features[0]"``: each sample is then what a request's ``features[0]`` holds; lists are tested
per position). A bounded random sample of each column is kept (``max_samples``, seeded), so the file stays
small whatever the size of the training set. Monitor reads it as ``reference: URL/runs/ID``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["PROFILE_VERSION", "write_profile"]

PROFILE_VERSION = 1


def _plain(value: Any) -> Any:
    """numpy arrays and scalars, torch tensors → lists and numbers (anything with ``tolist``)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def write_profile(
    columns: Mapping[str, Iterable[Any]], path: str | Path, *, max_samples: int = 1000, seed: int = 0
) -> Path:
    """Write ``{"nb2svc_profile": 1, "columns": {KEY: [sample, ...]}}`` to ``path``; returns the path."""
    rng = random.Random(seed)  # noqa: S311  # sampling, not secrets
    out: dict[str, list[Any]] = {}
    for key, values in columns.items():
        samples = list(_plain(values)) if not hasattr(values, "tolist") else _plain(values)
        if len(samples) > max_samples:
            samples = [samples[i] for i in sorted(rng.sample(range(len(samples)), max_samples))]
        out[str(key)] = samples
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"nb2svc_profile": PROFILE_VERSION, "columns": out}, allow_nan=False) + "\n")
    return target
