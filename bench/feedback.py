"""Does the prediction log slow serving? The figures in docs/benchmarks.md ("Prediction log").

python bench/feedback.py [--requests 2000]

Serves sample_notebooks/iris_nearest.ipynb with `nb2svc serve` (one worker) three times: the log off, a SQLite
log, a PostgreSQL log (a server of its own, started here from Debian's binaries, as the tests do). For each:
p50 and requests/s of sequential requests and of 8 concurrent clients, after a warm-up. Then, with PostgreSQL,
the server is stopped in the middle of a concurrent run: every request must still be answered 200, and the
drops are read from /metrics.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ is not a package: a module there named like one of the standard library's (bench/queue.py) must not
# shadow it, so this folder leaves the import path before anything else is imported.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402  # after the path fix above
import concurrent.futures  # noqa: E402  # after the path fix above
import os  # noqa: E402  # after the path fix above
import re  # noqa: E402  # after the path fix above
import statistics  # noqa: E402  # after the path fix above
import subprocess  # noqa: E402  # after the path fix above
import tempfile  # noqa: E402  # after the path fix above
import time  # noqa: E402  # after the path fix above

import httpx  # noqa: E402  # after the path fix above

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


def parallel(url: str, n: int, clients: int = 8, during: object = None) -> tuple[float, float, list[int]]:
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
    ap.add_argument("--rounds", type=int, default=3, help="runs of each mode; the medians are printed")
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
    print(f"{n} requests each; iris_nearest, 1 worker; sequential, then 8 concurrent clients; medians of {args.rounds}")
    print("| log | p50 ms (1 client) | req/s (1 client) | p50 ms (8 clients) | req/s (8 clients) | logged |")
    print("|---|---|---|---|---|---|")
    rounds: dict[str, list[tuple[float, float, float, float, int]]] = {name: [] for name in modes}
    try:
        for _ in range(args.rounds):  # the modes in turn, several times: the machine's load drifts meanwhile
            for name, env in modes.items():
                proc, url = serve(env)
                try:
                    sequential(url, 200)  # warm-up
                    p50, rps = sequential(url, n)
                    p50c, rpsc, statuses = parallel(url, n)
                    assert set(statuses) == {200}
                    time.sleep(1)
                    rounds[name].append((p50, rps, p50c, rpsc, int(metric(url, "nb2svc_predictions_logged_total"))))
                finally:
                    proc.terminate()
                    proc.wait(15)
        for name, results in rounds.items():
            p50, rps, p50c, rpsc = (statistics.median(r[i] for r in results) for i in range(4))
            print(f"| {name} | {p50:.3f} | {rps:.0f} | {p50c:.2f} | {rpsc:.0f} | {results[-1][4]} |")
        proc, url = serve({"NB2SVC_LOG_URL": pg.url, "NB2SVC_LOG_BUFFER": "500"})
        try:
            sequential(url, 100)
            _, rps, statuses = parallel(url, n, during=lambda: (time.sleep(0.3), pg.stop()))
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
