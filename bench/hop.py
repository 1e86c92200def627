"""The worker hop alone: ``ServingExecutor.invoke`` against ``InProcessExecutor.invoke``, no HTTP.

    python bench/hop.py                       # iris_nearest, 1 and 8 requests at once
    python bench/hop.py --notebook bench/notebooks/trivial_serving.ipynb --body '{"x": 1.5, "y": 2.0}'

For each executor and concurrency: microseconds of wall time and of this (the server's) process's CPU per
request, over ``--requests`` requests after a warm-up, in ``--rounds`` rounds. The difference between the two
executors is what the process hop costs the server; set ``NB2SVC_SPIN_US=0`` to see it without polling.
It imports nb2svc's runtime internals, so it follows their names; it is a diagnostic, not part of the API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nb2svc.runtime.config import Config
from nb2svc.runtime.inprocess import InProcessExecutor
from nb2svc.runtime.serving import ServingExecutor
from nb2svc.spec import inspect_notebook

ROOT = Path(__file__).resolve().parent.parent
IRIS = ROOT / "sample_notebooks" / "iris_nearest.ipynb"
IRIS_BODY = '{"features": [6.3, 2.9, 5.6, 1.8], "metric": "manhattan", "top_k": 2}'


async def measure(
    executor: Any, values: dict[str, Any], clients: int, requests: int, rounds: int
) -> tuple[float, float]:
    """Median over rounds of (wall µs, CPU µs) per request."""

    async def client(n: int) -> None:
        for _ in range(n):
            await executor.invoke(values)

    await asyncio.gather(*(client(max(1, requests // 10 // clients)) for _ in range(clients)))  # warm-up
    walls, cpus = [], []
    per_client = max(1, requests // rounds // clients)
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client(per_client) for _ in range(clients)))
        c1, w1 = time.process_time(), time.perf_counter()
        walls.append((w1 - w0) / (per_client * clients) * 1e6)
        cpus.append((c1 - c0) / (per_client * clients) * 1e6)
    return statistics.median(walls), statistics.median(cpus)


async def run(args: argparse.Namespace) -> int:
    spec = inspect_notebook(args.notebook)
    values = json.loads(args.body)
    config = Config.from_env(dict(os.environ), spec)
    os.chdir(spec.notebook.parent)
    print("| executor | requests at once | wall µs per request | server CPU µs per request |\n|---|---|---|---|")
    for name in ("in-process (NB2SVC_WORKERS=0)", "worker process (default)"):
        executor: Any = InProcessExecutor(spec, config) if name.startswith("in") else ServingExecutor(spec, config)
        await executor.start()
        while executor.state != "ok":
            if executor.state == "failed":
                raise SystemExit(f"{spec.notebook.name}: setup failed: {executor.setup_error}")
            await asyncio.sleep(0.05)
        try:
            for clients in args.clients:
                wall, cpu = await measure(executor, values, clients, args.requests, args.rounds)
                print(f"| {name} | {clients} | {wall:.1f} | {cpu:.1f} |", flush=True)
        finally:
            await executor.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebook", type=Path, default=IRIS)
    parser.add_argument("--body", default=IRIS_BODY, help="the parameters, as JSON")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="requests at once")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
