"""nb2svc's benchmarks, in one bounded run (about 1-2 minutes on 2 cores):

    python bench/run.py

1. Serving: latency (p50/p99) and requests/s of bench/notebooks/trivial_serving.ipynb under ``nb2svc serve``,
   against the same work hand-written as a FastAPI endpoint (bench/handwritten_fastapi.py), both on uvicorn
   with the same settings, both on 127.0.0.1, both measured by the same keep-alive clients.
2. Training: the time from ``POST /runs`` to the first cell of bench/notebooks/trivial_training.ipynb starting,
   and to the run's end, against plain papermill on the same notebook.

Prints markdown tables and writes every figure as JSON to $TMPDIR/nb2svc-bench-results.json.
Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
NOTEBOOKS = BENCH / "notebooks"
SERVING_NB = NOTEBOOKS / "trivial_serving.ipynb"
TRAINING_NB = NOTEBOOKS / "trivial_training.ipynb"
RESULTS = Path(tempfile.gettempdir()) / "nb2svc-bench-results.json"

BODY = json.dumps({"x": 1.5, "y": 2.0}).encode()
EXPECTED = {"total": 3.5}
HEADERS = {"Content-Type": "application/json"}
HEALTH_TIMEOUT = 60.0  # seconds for a service to answer /health with 200
REQUEST_TIMEOUT = 30.0  # seconds per HTTP request
REFILL_WAIT = 3.0  # seconds between training runs: the warm-kernel pool refills, nothing else runs
RUN_TIMEOUT = 60  # seconds per training run

Json = dict[str, Any]


# -- the notebooks ---------------------------------------------------------------------------------------------


def _notebook(cells: Sequence[tuple[str, str]], **nb2svc: Any) -> nbformat.NotebookNode:
    """A notebook of code cells ``(tags, source)``, with fixed cell ids so rewriting it changes no byte."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if nb2svc:
        nb.metadata["nb2svc"] = nb2svc
    for i, (tags, source) in enumerate(cells):
        cell = new_code_cell(source, metadata={"tags": tags.split(",")} if tags else {})
        cell.id = f"cell-{i}"
        nb.cells.append(cell)
    return nb


def write_notebooks() -> None:
    """Write the two trivial notebooks (only where their text differs from what is on disk)."""
    serving = _notebook(
        [
            ("", 'SETUP = "done"  # setup: runs once per worker'),
            ("parameters", "x: float = 1.0\ny: float = 2.0"),
            ("outputs", "total: float = x + y"),
        ]
    )
    training = _notebook(
        [
            ("", "import time\n\nt_first = time.time()  # the first cell starts: compared with the time of the POST"),
            ("parameters", "n: int = 1"),
            ("", "total = n + 1"),
            ("outputs", "t_first: float = t_first\ntotal: int = total"),
        ],
        kind="training",
    )
    NOTEBOOKS.mkdir(exist_ok=True)
    for path, nb in ((SERVING_NB, serving), (TRAINING_NB, training)):
        text = nbformat.writes(nb)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)


# -- processes -------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def kernel_children(pid: int) -> list[int]:
    """Live Jupyter kernels started by process ``pid`` (read from /proc; empty where there is none)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z" and b"ipykernel" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
    return found


class Server:
    """A service in a subprocess (its own session) on 127.0.0.1; stopped, with its kernels, by ``stop``."""

    def __init__(self, name: str, cmd: list[str], port: int, env: Mapping[str, str], cwd: Path) -> None:
        self.name = name
        self.port = port
        self.kernels: set[int] = set()  # kernel pids seen: killed at stop if they outlive the service
        self.ready_s: float | None = None  # seconds from the process's start to /health answering 200
        self.started = time.perf_counter()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, env=dict(env), cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> None:
        """Poll ``GET /health`` until 200 (bounded by ``timeout``); sets ``ready_s``."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                try:
                    conn.request("GET", "/health")
                    if conn.getresponse().status == 200:
                        self.ready_s = time.perf_counter() - self.started
                        return
                finally:
                    conn.close()
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer /health with 200 within {timeout:g} s:\n{self.output()}")

    def warm_kernels(self) -> int:
        """How many kernels the service holds now (training: its warm pool, plus any running or stopping)."""
        pids = kernel_children(self.proc.pid)
        self.kernels.update(pids)
        return len(pids)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 15 s; then kill any kernel it left behind."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        deadline = time.monotonic() + 5  # kernels poll their parent and exit on their own; give them a moment
        while any(_alive(k) for k in self.kernels) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self.kernels:
            with contextlib.suppress(OSError):  # gone already; or check it is still our kernel, not a reused pid
                if _alive(pid) and b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        self.log.close()


@contextlib.contextmanager
def server(name: str, cmd: list[str], env: Mapping[str, str] | None = None, cwd: Path = ROOT) -> Iterator[Server]:
    """Start a server on a free port (``{port}`` in ``cmd``), wait for /health, stop it on the way out."""
    port = free_port()
    srv = Server(name, [c.format(port=port) for c in cmd], port, {**os.environ, **(env or {})}, cwd)
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


# -- serving ---------------------------------------------------------------------------------------------------


def post_invoke(conn: http.client.HTTPConnection, body: bytes = BODY) -> bytes:
    """One ``POST /invoke`` on a keep-alive connection; anything but a 200 stops the benchmark."""
    conn.request("POST", "/invoke", body, HEADERS)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"POST /invoke answered {resp.status}: {data[:500]!r}")
    return data


def sequential(conn: http.client.HTTPConnection, count: int) -> tuple[list[float], float]:
    """``count`` requests one at a time on a keep-alive connection: their latencies (s), and the wall time."""
    latencies = []
    started = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        post_invoke(conn)
        latencies.append(time.perf_counter() - t)
    return latencies, time.perf_counter() - started


def concurrent(port: int, clients: int, per_client: int, warmup: int) -> tuple[list[float], float]:
    """``clients`` threads, each a keep-alive connection sending ``per_client`` requests back to back."""

    def invoke(conn: http.client.HTTPConnection) -> tuple[int, bytes]:
        return 200, post_invoke(conn)  # anything but a 200 raises: the benchmark stops

    latencies, wall, _ = concurrent_calls(port, clients, per_client, warmup, invoke)
    return latencies, wall


def concurrent_calls(
    port: int,
    clients: int,
    per_client: int,
    warmup: int,
    request: Callable[[http.client.HTTPConnection], tuple[int, bytes]],
) -> tuple[list[float], float, list[str]]:
    """``clients`` threads, each a keep-alive connection making ``per_client`` requests back to back after
    ``warmup`` unmeasured ones: the latencies of the 200 answers, the wall time, and what came back instead of a
    200 (``status: body``). ``request`` makes one request and returns its status and body."""
    barrier = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    refused: list[str] = []
    errors: list[BaseException] = []

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        try:
            for _ in range(warmup):
                request(conn)
            barrier.wait(REQUEST_TIMEOUT)
            for _ in range(per_client):
                t = time.perf_counter()
                status, data = request(conn)
                if status == 200:
                    latencies[i].append(time.perf_counter() - t)
                else:
                    refused.append(f"{status}: {data[:120].decode(errors='replace')}")
        except BaseException as e:
            errors.append(e)
            barrier.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        barrier.wait(REQUEST_TIMEOUT)
    except threading.BrokenBarrierError:
        raise RuntimeError(f"a client failed: {errors[0] if errors else 'timeout'}") from None
    started = time.perf_counter()
    for t in threads:
        t.join(REQUEST_TIMEOUT * 4)
    wall = time.perf_counter() - started
    if errors or any(t.is_alive() for t in threads):
        raise RuntimeError(f"a client failed: {errors[0] if errors else 'timeout'}")
    return [x for per in latencies for x in per], wall, refused


def percentile(values: Sequence[float], q: int) -> float:
    """The q-th percentile (1..99), interpolated."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def server_time(port: int) -> tuple[float, float]:
    """nb2svc's own total seconds spent answering ``/invoke``, and the count, from its ``/metrics`` histogram."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    found = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for key in found:
            if line.startswith(f"nb2svc_request_duration_seconds_{key}{{") and 'route="/invoke"' in line:
                found[key] = float(line.rsplit(" ", 1)[1])
    return found["sum"], found["count"]


def _latency(latencies: Sequence[float], wall: float) -> Json:
    return {
        "requests": len(latencies),
        "p50_ms": _ms(statistics.median(latencies)),
        "p90_ms": _ms(percentile(latencies, 90)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "mean_ms": _ms(statistics.fmean(latencies)),
        "max_ms": _ms(max(latencies)),
        "requests_per_s": round(len(latencies) / wall, 1),
    }


def bench_serving(endpoints: Mapping[str, tuple[list[str], Mapping[str, str]]], args: argparse.Namespace) -> Json:
    """Start every endpoint at once, then measure them in interleaved rounds, so noise from the machine
    (other tenants, CPU frequency) falls on all of them alike.

    Sequential: ``args.rounds`` rounds; in each, every endpoint (in a rotating order) answers a block of
    ``args.requests / args.rounds`` requests from one keep-alive client. Concurrent: the same, with
    ``args.clients`` threads each on its own keep-alive connection.
    """
    names = list(endpoints)
    print(f"serving: starting {', '.join(names)} ...", file=sys.stderr, flush=True)
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(server(name, cmd, env)) for name, (cmd, env) in endpoints.items()}
        conns = {}
        for name, srv in servers.items():
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=REQUEST_TIMEOUT)
            stack.callback(conn.close)
            answer = json.loads(post_invoke(conn))
            if answer != EXPECTED:
                raise RuntimeError(f"{name}: POST /invoke answered {answer}, expected {EXPECTED}")
            sequential(conn, args.warmup - 1)
            conns[name] = conn

        print("serving: sequential ...", file=sys.stderr, flush=True)
        lat: dict[str, list[float]] = {n: [] for n in names}
        wall = dict.fromkeys(names, 0.0)
        ratios = []  # nb2svc p50 / FastAPI p50, round by round
        before = {n: server_time(servers[n].port) for n in names if n.startswith("nb2svc")}
        block = max(1, args.requests // args.rounds)
        for r in range(args.rounds):
            p50 = {}
            for name in names[r % len(names) :] + names[: r % len(names)]:
                got, seconds = sequential(conns[name], block)
                lat[name] += got
                wall[name] += seconds
                p50[name] = statistics.median(got)
            ratios.append(p50["nb2svc"] / p50["fastapi"])
        after = {n: server_time(servers[n].port) for n in before}

        print("serving: concurrent ...", file=sys.stderr, flush=True)
        clat: dict[str, list[float]] = {n: [] for n in names}
        cwall = dict.fromkeys(names, 0.0)
        per_client = max(1, args.concurrent_requests // args.rounds // args.clients)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                got, seconds = concurrent(servers[name].port, args.clients, per_client, warmup=5)
                clat[name] += got
                cwall[name] += seconds

    out: Json = {}
    for name in names:
        seq = _latency(lat[name], wall[name])
        if name in before:
            spent, count = (x - y for x, y in zip(after[name], before[name], strict=True))
            seq["server_side_mean_ms"] = _ms(spent / count) if count else None
        conc = _latency(clat[name], cwall[name])
        conc["clients"] = args.clients
        out[name] = {"ready_s": round(servers[name].ready_s or 0.0, 3), "sequential": seq, "concurrent": conc}
    out["ratio_p50"] = round(out["nb2svc"]["sequential"]["p50_ms"] / out["fastapi"]["sequential"]["p50_ms"], 2)
    out["ratio_p99"] = round(out["nb2svc"]["sequential"]["p99_ms"] / out["fastapi"]["sequential"]["p99_ms"], 2)
    out["ratio_p50_by_round"] = [round(x, 2) for x in ratios]
    return out


# -- training --------------------------------------------------------------------------------------------------


def first_cell_start(nb: Json) -> float:
    """When papermill started the notebook's first code cell (its ``metadata.papermill.start_time``), epoch s.

    The notebook's own: nb2svc's prelude cell (tagged ``nb2svc-prelude``) is not run by the service.
    """
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "nb2svc-prelude" not in cell["metadata"].get("tags", []):
            return datetime.fromisoformat(cell["metadata"]["papermill"]["start_time"]).timestamp()
    raise ValueError("the notebook has no code cell")


def request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = RUN_TIMEOUT + 10
) -> tuple[int, bytes]:
    """One request on a fresh connection to 127.0.0.1:``port``: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body, HEADERS if body is not None else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _wait_for_pool(srv: Server, want: int) -> int:
    """Wait (bounded) until the service holds ``want`` kernels, then REFILL_WAIT more for them to finish starting."""
    deadline = time.monotonic() + 30
    while srv.warm_kernels() < want and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(REFILL_WAIT)
    return srv.warm_kernels()


def bench_training_nb2svc(runs: int, tmp: Path) -> Json:
    """``POST /runs?wait=60`` ``runs`` times, one after the other, each after the warm pool has refilled."""
    print("training: nb2svc serve ...", file=sys.stderr, flush=True)
    warm = 2  # NB2SVC_WARM_KERNELS' default for one run at a time (max_runs + 1)
    env = {"NB2SVC_RUNS_DIR": str(tmp / "runs"), "NB2SVC_WARM_KERNELS": str(warm)}
    cmd = [sys.executable, "-m", "nb2svc.cli", "serve", str(TRAINING_NB), "--port", "{port}"]
    records = []
    with server("nb2svc training", cmd, env, cwd=tmp) as srv:
        for _ in range(runs):
            kernels = _wait_for_pool(srv, warm)
            t0 = time.time()
            p0 = time.perf_counter()
            status, data = request(srv.port, "POST", f"/runs?wait={RUN_TIMEOUT}", json.dumps({"n": 1}).encode())
            total = time.perf_counter() - p0
            run = json.loads(data)
            if status != 200 or run.get("status") != "succeeded":
                raise RuntimeError(f"POST /runs answered {status}: {data[:1000]!r}\n{srv.output()}")
            status, data = request(srv.port, "GET", f"/runs/{run['id']}/notebook")
            if status != 200:
                raise RuntimeError(f"GET /runs/{run['id']}/notebook answered {status}: {data[:500]!r}")
            nb = json.loads(data)
            records.append(
                {
                    "kernels_held_before": kernels,
                    "to_first_cell_s": round(first_cell_start(nb) - t0, 3),
                    "to_first_cell_kernel_s": round(run["outputs"]["t_first"] - t0, 3),
                    "total_s": round(total, 3),
                    "run_duration_s": run.get("duration_s"),
                }
            )
            srv.warm_kernels()
    return _summary(records)


def bench_training_papermill_cli(runs: int, tmp: Path) -> Json:
    """The ``papermill`` command, a fresh process and kernel each run: start to first cell, and to its exit."""
    print("training: papermill CLI ...", file=sys.stderr, flush=True)
    records = []
    for i in range(runs):
        out = tmp / f"papermill-cli-{i}.ipynb"
        cmd = [sys.executable, "-m", "papermill", str(TRAINING_NB), str(out), "-p", "n", "1", "--no-progress-bar"]
        t0 = time.time()
        p0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        total = time.perf_counter() - p0
        if proc.returncode != 0:
            raise RuntimeError(f"papermill exited with {proc.returncode}:\n{output.decode(errors='replace')[-3000:]}")
        nb = json.loads(out.read_text())
        records.append({"to_first_cell_s": round(first_cell_start(nb) - t0, 3), "total_s": round(total, 3)})
        time.sleep(1.0)  # the previous kernel's exit is not measured
    return _summary(records)


def bench_training_papermill_api(runs: int, tmp: Path) -> Json:
    """``papermill.execute_notebook`` in this process (papermill already imported), a fresh kernel each run."""
    print("training: papermill.execute_notebook ...", file=sys.stderr, flush=True)
    import papermill

    records = []
    for i in range(runs):
        out = tmp / f"papermill-api-{i}.ipynb"
        t0 = time.time()
        p0 = time.perf_counter()
        papermill.execute_notebook(
            TRAINING_NB, out, parameters={"n": 1}, kernel_name="python3", progress_bar=False, log_output=False
        )
        total = time.perf_counter() - p0
        nb = json.loads(out.read_text())
        records.append({"to_first_cell_s": round(first_cell_start(nb) - t0, 3), "total_s": round(total, 3)})
        time.sleep(1.0)
    return _summary(records)


def _summary(records: list[Json]) -> Json:
    keys = [k for k in records[0] if k.endswith("_s") and all(r.get(k) is not None for r in records)]
    medians = {k: round(statistics.median(r[k] for r in records), 3) for k in keys}
    return {"runs": records, "median": medians}


# -- report ----------------------------------------------------------------------------------------------------


def machine() -> Json:
    """The machine the figures come from."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(results: Json) -> str:
    """The results as markdown."""
    s = results["serving"]
    out = [
        f"machine: {results['machine']['cpus']} CPUs, {results['machine']['cpu_model']}, "
        f"Python {results['machine']['python']}",
        "",
        "### Serving (POST /invoke, trivial notebook)",
        "",
    ]
    rows = []
    for name in ("fastapi", *[k for k in s if k.startswith("nb2svc")]):
        r = s[name]
        q, c = r["sequential"], r["concurrent"]
        rows.append(
            [
                name,
                q["p50_ms"],
                q["p99_ms"],
                q["requests_per_s"],
                c["p50_ms"],
                c["p99_ms"],
                c["requests_per_s"],
                q.get("server_side_mean_ms") or "",
                r["ready_s"],
            ]
        )
    out.append(
        table(
            [
                "endpoint",
                "p50 ms",
                "p99 ms",
                "req/s (1 client)",
                f"p50 ms ({results['settings']['clients']} clients)",
                "p99 ms (concurrent)",
                "req/s (concurrent)",
                "server-side mean ms",
                "ready s",
            ],
            rows,
        )
    )
    out += [
        "",
        f"nb2svc / FastAPI p50: **{s['ratio_p50']}x** (target ≤ 1.5x: "
        f"{'met' if results['targets']['serving_p50_within_1_5x'] else 'NOT met'})",
        "",
    ]
    t = results["training"]
    out += [f"### Training (trivial notebook, medians of {results['settings']['training_runs']} sequential runs)", ""]
    labels = {
        "nb2svc": "nb2svc `POST /runs?wait=60` (warm kernel)",
        "papermill_cli": "`papermill` CLI (fresh process)",
        "papermill_api": "`papermill.execute_notebook` (in-process, fresh kernel)",
    }
    rows = [[labels[k], t[k]["median"]["to_first_cell_s"], t[k]["median"]["total_s"]] for k in labels]
    out.append(table(["how", "request → first cell starts, s", "request → run finished, s"], rows))
    out += ["", f"nb2svc start overhead / papermill CLI's: **{t['ratio_to_first_cell']}x**"]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every benchmark, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=300, help="sequential requests not measured")
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests measured")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (threads)")
    parser.add_argument("--concurrent-requests", type=int, default=2000, help="requests across all clients")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds the requests are split into")
    parser.add_argument("--training-runs", type=int, default=5)
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    write_notebooks()
    results: Json = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "serving": {},
        "training": {},
        "targets": {},
    }
    if not args.skip_serving:
        fastapi_cmd = [sys.executable, str(BENCH / "handwritten_fastapi.py"), "--port", "{port}"]
        nb2svc_cmd = [sys.executable, "-m", "nb2svc.cli", "serve", str(SERVING_NB), "--port", "{port}"]
        endpoints = {
            "fastapi": (fastapi_cmd, {}),
            "nb2svc": (nb2svc_cmd, {}),
            "nb2svc_workers_2": (nb2svc_cmd, {"NB2SVC_WORKERS": "2"}),
        }
        s = results["serving"] = bench_serving(endpoints, args)
        results["targets"]["serving_p50_within_1_5x"] = s["ratio_p50"] <= 1.5
    if not args.skip_training:
        t = results["training"]
        with tempfile.TemporaryDirectory(prefix="nb2svc-bench-") as tmp:
            t["nb2svc"] = bench_training_nb2svc(args.training_runs, Path(tmp))
            t["papermill_cli"] = bench_training_papermill_cli(args.training_runs, Path(tmp))
            t["papermill_api"] = bench_training_papermill_api(args.training_runs, Path(tmp))
        ratio = t["nb2svc"]["median"]["to_first_cell_s"] / t["papermill_cli"]["median"]["to_first_cell_s"]
        t["ratio_to_first_cell"] = round(ratio, 3)
        results["targets"]["training_start_well_under_papermill"] = ratio <= 0.25
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    if not args.skip_serving and not args.skip_training:
        print(report(results))
    else:
        print(json.dumps(results, indent=2))
    print(f"\n(elapsed {results['elapsed_s']} s; JSON in {args.output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
