"""Does the prediction log slow serving? The figures in docs/benchmarks.md ("Prediction log").

python bench/feedback.py [--requests 2000]

Serves sample_notebooks/iris_nearest.ipynb with `nb2svc serve` (one worker) three times: the log off, a SQLite
log, a PostgreSQL log (a server of its own, started here from Debian's binaries, as the tests do). For each:
p50 and requests/s of sequential requests and of 8 concurrent clients, after a warm-up. Then, with PostgreSQL,
the server is stopped in the middle of a concurrent run: every request must still be answered 200, and the
drops are read from /metrics.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import Postgres, free_port, postgres_bindir  # noqa: E402  # the tests' own server

NOTEBOOK = ROOT / "sample_notebooks/iris_nearest.ipynb"
BODY = {"features": [6.3, 2.9, 5.6, 1.8], "metric": "manhattan"}


def serve(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nb2svc.cli", "serve", str(NOTEBOOK), "--port", str(port)],
        env={**os.environ, **env},
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("the service never became healthy")


def sequential(url: str, n: int) -> tuple[float, float]:
    times = []
    with httpx.Client(base_url=url) as c:
        started = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            assert c.post("/invoke", json=BODY).status_code == 200
            times.append(time.perf_counter() - t)
        total = time.perf_counter() - started
    return statistics.median(times) * 1000, n / total


def concurrent(url: str, n: int, clients: int = 8, during: object = None) -> tuple[float, float, list[int]]:
    per = n // clients
    statuses: list[int] = []
    times: list[float] = []

    def one(_: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            for _ in range(per):
                t = time.perf_counter()
                statuses.append(c.post("/invoke", json=BODY).status_code)
                times.append(time.perf_counter() - t)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one, i) for i in range(clients)]
        if callable(during):
            during()
        for f in futures:
            f.result()
    total = time.perf_counter() - started
    return statistics.median(times) * 1000, per * clients / total, statuses


def metric(url: str, name: str) -> float:
    found = re.findall(rf"^{re.escape(name)} ([0-9.e+]+)$", httpx.get(f"{url}/metrics").text, re.M)
    return float(found[0]) if found else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    n = args.requests
    bindir = postgres_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed: scripts/services-setup")
    tmp = Path(tempfile.mkdtemp(prefix="nb2svc-bench-", dir="/tmp"))  # user postgres reads it
    pg = Postgres(bindir, tmp / "pg", free_port())
    pg.init()
    pg.start()
    modes = {
        "off": {"NB2SVC_LOG_URL": "off"},
        "sqlite": {"NB2SVC_LOG_URL": f"sqlite:///{tmp / 'log.sqlite'}"},
        "postgresql": {"NB2SVC_LOG_URL": pg.url},
    }
    print(f"{n} requests each; iris_nearest, 1 worker; sequential, then 8 concurrent clients")
    print("| log | p50 ms (1 client) | req/s (1 client) | p50 ms (8 clients) | req/s (8 clients) | logged |")
    print("|---|---|---|---|---|---|")
    try:
        for name, env in modes.items():
            proc, url = serve(env)
            try:
                sequential(url, 200)  # warm-up
                p50, rps = sequential(url, n)
                p50c, rpsc, statuses = concurrent(url, n)
                assert set(statuses) == {200}
                time.sleep(1)
                logged = int(metric(url, "nb2svc_predictions_logged_total"))
                print(f"| {name} | {p50:.3f} | {rps:.0f} | {p50c:.2f} | {rpsc:.0f} | {logged} |")
            finally:
                proc.terminate()
                proc.wait(15)
        proc, url = serve({"NB2SVC_LOG_URL": pg.url})
        try:
            sequential(url, 100)
            _, rps, statuses = concurrent(url, n, during=lambda: (time.sleep(0.3), pg.stop()))
            time.sleep(1)
            dropped = metric(url, 'nb2svc_predictions_dropped_total{reason="full"}')
            queued = metric(url, "nb2svc_prediction_log_queued")
            logged = metric(url, "nb2svc_predictions_logged_total")
            print(
                f"\nPostgreSQL stopped 0.3 s into {n} concurrent requests: {statuses.count(200)}/{len(statuses)} "
                f"answered 200 at {rps:.0f} req/s; logged {logged:.0f}, still buffered {queued:.0f}, "
                f"dropped {dropped:.0f} (buffer full), log up: {metric(url, 'nb2svc_prediction_log_up'):.0f}"
            )
        finally:
            proc.terminate()
            proc.wait(15)
    finally:
        try:
            pg.stop()
        except subprocess.CalledProcessError:
            pass


if __name__ == "__main__":
    main()
