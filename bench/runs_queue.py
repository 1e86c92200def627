"""Training on many replicas: what the Redis queue costs, and what a second replica brings (docs/benchmarks.md).

python bench/runs_queue.py [--runs 20]

1. Time from `POST /runs` to the notebook's first cell, one replica: the embedded queue, then the Redis queue
   (NB2SVC_QUEUE_URL, a redis-server of its own on 127.0.0.1). The first cell records `time.time()`; the
   client notes the time just before it sends; both clocks are this machine's. Runs go one at a time.
2. Runs per minute of a short notebook (a 0.5 s cell) with 1 and 2 replicas on one Redis queue: all runs are
   posted at once, alternately to the replicas, and the clock stops when the last one has finished.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import nbformat
from nbformat.v4 import new_code_cell, new_notebook


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _notebook(folder: Path) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["nb2svc"] = {"kind": "training"}
    nb.cells = [
        new_code_cell("import time\nFIRST_CELL = time.time()"),
        new_code_cell("sleep: float = 0.0", metadata={"tags": ["parameters"]}),
        new_code_cell("time.sleep(sleep)"),
        new_code_cell("first_cell: float = FIRST_CELL", metadata={"tags": ["outputs"]}),
    ]
    path = folder / "queue_bench.ipynb"
    nbformat.write(nb, path)
    return path


@contextmanager
def _redis(folder: Path) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def _serve(notebook: Path, env: Mapping[str, str]) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "nb2svc.cli", "serve", str(notebook), "--port", str(port)]
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env}, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _to_first_cell(url: str, runs: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=120) as client:
        client.post("/runs?wait=60", json={})  # warm-up: imports, the first kernel
        for _ in range(runs):
            sent = time.time()
            run = client.post("/runs?wait=60", json={}).json()
            assert run["status"] == "succeeded", run
            out.append((run["outputs"]["first_cell"] - sent) * 1000)
            time.sleep(1.0)  # the warm kernel pool refills, as between real runs
    return out


def _throughput(urls: list[str], runs: int) -> float:
    clients = [httpx.Client(base_url=u, timeout=120) for u in urls]
    started = time.monotonic()
    ids = [clients[n % len(clients)].post("/runs", json={"sleep": 0.5}).json()["id"] for n in range(runs)]
    for run_id in ids:
        while clients[0].get(f"/runs/{run_id}").json()["status"] in {"queued", "running"}:
            time.sleep(0.1)
    elapsed = time.monotonic() - started
    for c in clients:
        c.close()
    return runs / elapsed * 60


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="nb2svc-bench-queue-"))
    try:
        notebook = _notebook(folder)
        with _serve(notebook, {"NB2SVC_RUNS_DIR": str(folder / "embedded")}) as url:
            embedded = _to_first_cell(url, args.runs)
        with _redis(folder) as redis_url:
            env = {"NB2SVC_QUEUE_URL": redis_url, "NB2SVC_RUNS_DIR": str(folder / "shared")}
            with _serve(notebook, {**env, "NB2SVC_INSTANCE": "a"}) as url:
                shared = _to_first_cell(url, args.runs)
                one = _throughput([url], args.runs)
                with _serve(notebook, {**env, "NB2SVC_INSTANCE": "b"}) as second:
                    two = _throughput([url, second], args.runs)
        print(f"POST /runs → first cell, {args.runs} runs, one replica (ms):")
        for name, times in (("embedded", embedded), ("redis", shared)):
            q = statistics.quantiles(times, n=10)
            print(f"  {name:9} p50 {statistics.median(times):7.1f}  p90 {q[-1]:7.1f}  max {max(times):7.1f}")
        print(f"  redis - embedded at p50: {statistics.median(shared) - statistics.median(embedded):+.1f} ms")
        print(f"runs/minute of a 0.5 s notebook ({args.runs} runs posted at once, Redis queue):")
        print(f"  1 replica  {one:6.1f}")
        print(f"  2 replicas {two:6.1f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
