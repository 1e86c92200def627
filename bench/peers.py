"""nb2svc beside the tools a user would pick instead, serving the same notebook (issue 12), in one command:

    python bench/peers.py [--requests 2000] [--rounds 8] [--clients 8] [--only nb2svc,fastapi] [--skip-install] [--pin]

sample_notebooks/iris_nearest.ipynb is served by ``nb2svc serve`` (default: one worker process) and with
``NB2SVC_WORKERS=0``; its cells, copied into bench/peers/iris_model.py, are served by each peer from a venv of
its own (made once under ~/.cache/nb2svc-bench/peers/<name>, or $NB2SVC_BENCH_CACHE/<name>, and reused):

- ``fastapi``: a hand-written FastAPI endpoint with a pydantic model, on uvicorn (httptools, uvloop: nb2svc's stack),
  bench/peers/iris_fastapi.py;
- ``bentoml``: BentoML 1.4.40, ``bentoml serve`` of bench/peers/iris_bentoml.py;
- ``mlserver``: MLServer 1.7.1, a custom runtime (bench/peers/iris_mlserver.py) behind the V2 inference protocol;
- ``litserve``: LitServe 0.2.19, bench/peers/iris_litserve.py;
- ``cog``: Cog 0.23.1's server (coglet, ``python -m cog.server.http``, no Docker), bench/peers/cog/predict.py.

Each typed the way its framework types input (``features`` a list of numbers, required; ``metric``, ``top_k``,
``note`` optional; unknown fields refused where the framework can). A peer that cannot be installed or started
here is skipped with a note. Then:

1. every endpoint must give the same answer (each framework wraps it its own way: normalized) to a few inputs;
2. interleaved rounds, in a rotating order, of ``--requests / --rounds`` requests per endpoint from one
   keep-alive client (p50/p90/p99, req/s), then the same from ``--clients`` keep-alive clients (req/s);
3. RSS of each server's whole process tree after the rounds, and the time from its process's start to the
   first 200 answer to a prediction (each server started alone, one after the other);
4. bad input: a few bad bodies to each endpoint, the status and what the answer says.

``--pin``: the load generator (this process and its client threads) runs on the first CPU only and every server,
with its workers, on the others (``taskset``), so no server shares a core with the client: what each server costs
per request, as on a machine whose load comes from elsewhere. Without it everything shares every core.

Prints markdown tables (ratios to ``nb2svc serve`` in its default mode) and writes every figure as JSON to
$TMPDIR/nb2svc-peers.json. Every process it starts is stopped before it exits, on error too; servers listen
on 127.0.0.1 only. Linux only (process trees and RSS are read from /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from run import HEADERS, REQUEST_TIMEOUT, Server, concurrent_calls, free_port, machine, percentile, table

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SERVICES = BENCH / "peers"  # the peers' service files, and iris_model.py (the notebook's cells)
NOTEBOOK = ROOT / "sample_notebooks" / "iris_nearest.ipynb"
CACHE = Path(os.environ.get("NB2SVC_BENCH_CACHE") or Path.home() / ".cache" / "nb2svc-bench" / "peers")
RESULTS = Path(tempfile.gettempdir()) / "nb2svc-peers.json"
READY_TIMEOUT = 180.0  # seconds for a server's first 200 answer (BentoML and MLServer start several processes)
INSTALL_TIMEOUT = 1800  # seconds for one peer's pip install
POLL = 0.02  # seconds between attempts while waiting for the first answer
EXCERPT = 90  # characters of a bad input's answer shown in the table
COGLET_PREDICTIONS = Path("/tmp/coglet/predictions")  # noqa: S108 coglet's, fixed: a folder per prediction, kept

Json = dict[str, Any]

# The parameters sent while measuring: every field given, so every framework parses all four.
PARAMS: Json = {"features": [6.3, 2.9, 5.6, 1.8], "metric": "manhattan", "top_k": 2}
# The inputs whose answers must agree across endpoints (normalized) before anything is measured.
CHECKS: list[Json] = [
    PARAMS,
    {"features": [5.1, 3.5, 1.4, 0.2]},
    {"features": [6.0, 2.8, 4.5, 1.4], "metric": "cosine", "top_k": 1, "note": "sample 7"},
    {"features": [5.9, 3.0, 5.1, 1.8], "metric": "euclidean", "top_k": 3},
]
NOT_JSON = b"{not json"
BAD_INPUTS: dict[str, Json | bytes] = {
    "features missing": {"metric": "euclidean"},
    'features "abc"': {"features": "abc"},
    "unknown field": {"features": [5.1, 3.5, 1.4, 0.2], "colour": "blue"},
    "not JSON": NOT_JSON,
    "3 features": {"features": [5.1, 3.5, 1.4]},
}


def _pin(dist: str, fallback: str) -> str:
    """``dist==<the version in this venv>``: the hand-written peer runs the stack nb2svc runs on."""
    try:
        return f"{dist}=={metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return f"{dist}=={fallback}"


# -- the endpoints ---------------------------------------------------------------------------------------------


def _plain(params: Json) -> bytes:
    return json.dumps(params).encode()


def _cog_body(params: Json) -> bytes:
    return json.dumps({"input": params}).encode()


def _tensor(name: str, value: Any) -> Json:
    """One V2 inference-protocol input tensor for a parameter (numbers FP64/INT64, anything else BYTES)."""
    if isinstance(value, list) and all(isinstance(v, int | float) for v in value):
        return {"name": name, "datatype": "FP64", "shape": [len(value)], "data": value}
    if isinstance(value, int) and not isinstance(value, bool):
        return {"name": name, "datatype": "INT64", "shape": [1], "data": [value]}
    return {"name": name, "datatype": "BYTES", "shape": [1], "data": [value if isinstance(value, str) else None]}


def _mlserver_body(params: Json) -> bytes:
    return json.dumps({"inputs": [_tensor(k, v) for k, v in params.items() if v is not None]}).encode()


def _same(answer: Json) -> Json:
    return answer


def _cog_answer(answer: Json) -> Json:
    if answer.get("status") != "succeeded":
        raise ValueError(f"prediction {answer.get('status')}: {answer.get('error')}")
    out: Json = answer["output"]
    return out


def _mlserver_answer(answer: Json) -> Json:
    out = {o["name"]: o["data"][0] for o in answer["outputs"]}
    return {
        "label": out["label"],
        "distance": out["distance"],
        "scores": json.loads(out["scores"]),
        "note": out.get("note"),
    }


@dataclass(frozen=True)
class Endpoint:
    """How to install, start and call one server of the notebook's work."""

    name: str
    label: str  # in the tables
    path: str  # the prediction's HTTP path
    requirements: tuple[str, ...] = ()  # pip requirements of the peer's own venv; empty: this venv (nb2svc)
    encode: Callable[[Json], bytes] = _plain  # parameters -> request body
    normalize: Callable[[Json], Json] = _same  # the answer's JSON -> {label, distance, scores, note}
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""  # said in the JSON and the report

    def command(self, venv: Path, port: int, clients: int, scratch: Path) -> tuple[list[str], dict[str, str]]:
        """The command line and the environment additions that start the server on 127.0.0.1:``port``
        (``clients``: how many requests at once it must take, where a framework asks; ``scratch``: a folder
        for what it writes)."""
        bin_ = venv / "bin"
        if self.name.startswith("nb2svc"):
            cmd = [sys.executable, "-m", "nb2svc.cli", "serve", str(NOTEBOOK), "--port", str(port)]
            return cmd, dict(self.env)
        env = {
            **self.env,
            "PYTHONPATH": str(SERVICES),
            "VIRTUAL_ENV": str(venv),
            "PATH": f"{bin_}{os.pathsep}{os.environ.get('PATH', '')}",  # coglet starts its worker as `python`
        }
        if self.name == "fastapi":
            return [str(bin_ / "python"), "iris_fastapi.py", "--port", str(port)], env
        if self.name == "bentoml":
            return [
                str(bin_ / "bentoml"),
                "serve",
                "iris_bentoml:Iris",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ], env
        if self.name == "litserve":
            return [str(bin_ / "python"), "iris_litserve.py", "--port", str(port)], env
        if self.name == "cog":
            env |= {
                "COG_PREDICT_TYPE_STUB": "predict.py:Runner",
                "COG_MAX_CONCURRENCY": str(max(clients, 1)),
                "PORT": str(port),
            }
            return [str(bin_ / "python"), "-m", "cog.server.http", "--host", "127.0.0.1"], env
        if self.name == "mlserver":
            env |= {
                "MLSERVER_HOST": "127.0.0.1",
                "MLSERVER_HTTP_PORT": str(port),
                "MLSERVER_GRPC_PORT": str(free_port()),
                "MLSERVER_METRICS_PORT": str(free_port()),
                "MLSERVER_METRICS_DIR": str(scratch / "mlserver-metrics"),  # not .metrics/ in bench/peers/
                "MLSERVER_ENVIRONMENTS_DIR": str(scratch / "mlserver-envs"),
            }
            return [str(bin_ / "mlserver"), "start", "mlserver"], env
        raise ValueError(f"no command for {self.name}")


ENDPOINTS = [
    Endpoint("nb2svc", "nb2svc serve (1 worker)", "/invoke"),
    Endpoint("nb2svc_workers_0", "nb2svc serve, NB2SVC_WORKERS=0", "/invoke", env={"NB2SVC_WORKERS": "0"}),
    Endpoint(
        "fastapi",
        "FastAPI + pydantic on uvicorn (httptools, uvloop)",
        "/invoke",
        (
            _pin("fastapi", "0.165.0"),
            _pin("pydantic", "2.14.4"),
            _pin("uvicorn", "0.55.0"),
            _pin("httptools", "0.9.0"),
            _pin("uvloop", "0.23.0"),
        ),
        note="hand-written; fastapi, pydantic, uvicorn, httptools and uvloop pinned to the versions nb2svc's venv runs",
    ),
    Endpoint("bentoml", "BentoML", "/invoke", ("bentoml==1.4.40",)),
    Endpoint(
        "mlserver",
        "MLServer (V2 protocol)",
        "/v2/models/iris/infer",
        ("mlserver==1.7.1", "uvloop<0.22"),
        _mlserver_body,
        _mlserver_answer,
        note="uvloop<0.22: with uvloop 0.22+ MLServer 1.7.1's inference worker dies at start "
        "(asyncio.get_event_loop() raises 'There is no current event loop') and the model never loads",
    ),
    Endpoint("litserve", "LitServe", "/predict", ("litserve==0.2.19",)),
    Endpoint(
        "cog",
        "Cog (coglet, no Docker)",
        "/predictions",
        ("cog==0.23.1", "coglet==0.23.1"),
        _cog_body,
        _cog_answer,
        note="python -m cog.server.http with COG_PREDICT_TYPE_STUB (what a `cog build` image runs), an async run() "
        "and COG_MAX_CONCURRENCY=--clients (with one slot coglet answers 409 'At capacity' to back-to-back "
        "requests), and bench/peers/cog/.cog/openapi_schema.json written by hand in place of the one "
        "`cog build` generates (without it coglet checks no input)",
    ),
]
VERSIONED = {"bentoml": "bentoml", "mlserver": "mlserver", "litserve": "litserve", "cog": "cog"}  # in labels


# -- installing the peers --------------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def venv_of(ep: Endpoint) -> Path:
    return CACHE / ep.name


def install(ep: Endpoint, skip: bool) -> tuple[Json | None, str]:
    """The peer's venv, made (or reused when made with the same requirements): ({dist: version}, '') or
    (None, why it cannot be used)."""
    venv = venv_of(ep)
    marker = venv / "nb2svc-bench.json"
    with contextlib.suppress(OSError, ValueError):
        made = json.loads(marker.read_text())
        if made.get("requirements") == list(ep.requirements):
            return made["versions"], ""
    if skip:
        return None, f"no venv made with {' '.join(ep.requirements)} at {venv} (--skip-install)"
    _say(f"install: {ep.name} ({' '.join(ep.requirements)}) into {venv} ...")
    base = getattr(sys, "_base_executable", sys.executable)  # the interpreter under this venv
    python = venv / "bin" / "python"
    steps = [[base, "-m", "venv", "--clear", str(venv)], [str(python), "-m", "pip", "install", "-q", *ep.requirements]]
    for step in steps:
        try:
            subprocess.run(step, check=True, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        except subprocess.CalledProcessError as e:
            lines = [ln for ln in (e.stderr or e.stdout or "").splitlines() if not ln.startswith("WARNING: Location")]
            return (
                None,
                f"`{' '.join(step[2:5])} ...` failed ({e.returncode}): {' / '.join(ln[:300] for ln in lines[-3:])}",
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"`{' '.join(step[2:5])} ...` failed: {e}"
    probe = (
        "import json, sys; from importlib.metadata import version; "
        "print(json.dumps({d: version(d) for d in sys.argv[1:]}))"
    )
    dists = sorted({r.split("=")[0].split("<")[0].split("[")[0] for r in ep.requirements})
    out = subprocess.run([str(python), "-c", probe, *dists], check=True, capture_output=True, text=True).stdout
    versions: Json = json.loads(out)
    marker.write_text(json.dumps({"requirements": list(ep.requirements), "versions": versions}, indent=2) + "\n")
    return versions, ""


# -- process trees (/proc) -------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in ticks) of a live process, or None."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[0], int(fields[19])
    return None


def tree(pid: int) -> dict[int, int]:
    """``pid`` and every live descendant (children in other sessions included): {pid: start time}."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        st = _stat(int(entry.name))
        if st and st[1] != "Z":
            children.setdefault(st[0], []).append(int(entry.name))
            starts[int(entry.name)] = st[2]
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in starts and p not in found:
            found[p] = starts[p]
            todo += children.get(p, [])
    return found


def rss_mib(pids: dict[int, int]) -> float:
    """The summed resident set size of these processes, MiB (shared pages counted in each, as ps does)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return round(total * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _listing(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


PIN_SERVERS: list[str] = []  # --pin: ["taskset", "-c", CPUS], put before every server's command


class PeerServer(Server):
    """run.Server, waiting for the first 200 prediction instead of /health, and stopping the whole tree it
    started (BentoML's workers, for one, run in sessions of their own)."""

    def __init__(self, ep: Endpoint, venv: Path, clients: int, scratch: Path) -> None:
        port = free_port()
        cmd, env = ep.command(venv, port, clients, scratch)
        self.endpoint = ep
        self.seen: dict[int, int] = {}  # every process of its tree seen: {pid: start time}
        self.coglet_before = _listing(COGLET_PREDICTIONS) if ep.name == "cog" else None
        cwd = ROOT if ep.name.startswith("nb2svc") else SERVICES / "cog" if ep.name == "cog" else SERVICES
        super().__init__(ep.name, [*PIN_SERVERS, *cmd], port, {**os.environ, **env}, cwd)

    def processes(self) -> dict[int, int]:
        now = tree(self.proc.pid)
        self.seen.update(now)
        return now

    def wait_answer(self, timeout: float = READY_TIMEOUT) -> bytes:
        """Send the measured request until it is answered 200 (bounded); sets ``ready_s``; the answer."""
        body = self.endpoint.encode(PARAMS)
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with code {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                try:
                    conn.request("POST", self.endpoint.path, body, HEADERS)
                    resp = conn.getresponse()
                    data = resp.read()
                    if resp.status == 200:
                        self.ready_s = time.perf_counter() - self.started
                        self.processes()
                        return data
                finally:
                    conn.close()
            time.sleep(POLL)
        raise RuntimeError(f"no 200 from POST {self.endpoint.path} within {timeout:g} s:\n{self.output()}")

    def stop(self) -> None:
        """Run.Server's stop (SIGTERM to its process group, SIGKILL after 15 s), then any process of its tree
        still alive (checked by start time, not a reused pid): SIGTERM, and SIGKILL 5 s later."""
        with contextlib.suppress(OSError):
            self.processes()
        super().stop()
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
            alive = [p for p, start in self.seen.items() if (st := _stat(p)) and st[2] == start and st[1] != "Z"]
            for pid in alive:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while alive and time.monotonic() < deadline:
                alive = [p for p in alive if (st := _stat(p)) and st[2] == self.seen[p] and st[1] != "Z"]
                time.sleep(0.1)
        if self.coglet_before is not None:  # coglet leaves a folder per prediction in /tmp/coglet/predictions
            for name in _listing(COGLET_PREDICTIONS) - self.coglet_before:
                if name.startswith("pred_"):
                    shutil.rmtree(COGLET_PREDICTIONS / name, ignore_errors=True)


# -- the client ------------------------------------------------------------------------------------------------


def call(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", path, body, HEADERS)
    resp = conn.getresponse()
    return resp.status, resp.read()


def sequential(conn: http.client.HTTPConnection, ep: Endpoint, count: int) -> tuple[list[float], float]:
    """``count`` requests one at a time on a keep-alive connection: their latencies (s), and the wall time.
    The connection is opened afresh by one request not measured (servers close connections idle for a few
    seconds, as they are while the other endpoints are measured)."""
    body, path = ep.encode(PARAMS), ep.path
    conn.close()
    call(conn, path, body)
    latencies = []
    started = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        status, data = call(conn, path, body)
        latencies.append(time.perf_counter() - t)
        if status != 200:
            raise RuntimeError(f"{ep.name}: POST {path} answered {status}: {data[:300]!r}")
    return latencies, time.perf_counter() - started


def concurrent(port: int, ep: Endpoint, clients: int, per_client: int) -> tuple[list[float], float, list[str]]:
    """``clients`` threads, each a keep-alive connection sending ``per_client`` requests back to back: the
    latencies of the 200 answers, the wall time, and what came back instead of a 200 (status: body)."""
    body, path = ep.encode(PARAMS), ep.path
    try:
        return concurrent_calls(port, clients, per_client, 1, lambda conn: call(conn, path, body))
    except RuntimeError as e:
        raise RuntimeError(f"{ep.name}: {e}") from None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def summary(latencies: Sequence[float], wall: float) -> Json:
    if len(latencies) < 2:
        return {"requests": len(latencies), "requests_per_s": round(len(latencies) / wall, 1) if wall else 0.0}
    return {
        "requests": len(latencies),
        "p50_ms": _ms(statistics.median(latencies)),
        "p90_ms": _ms(percentile(latencies, 90)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "mean_ms": _ms(statistics.fmean(latencies)),
        "requests_per_s": round(len(latencies) / wall, 1),
    }


# -- the run ---------------------------------------------------------------------------------------------------


def rotations(names: list[str], rounds: int) -> Iterator[list[str]]:
    for r in range(rounds):
        k = r % len(names)
        yield names[k:] + names[:k]


def bad_inputs(srv: PeerServer) -> Json:
    """Each bad body to a fresh connection: {case: {status, body (its start)}}."""
    out = {}
    for case, params in BAD_INPUTS.items():
        body = params if isinstance(params, bytes) else srv.endpoint.encode(params)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=REQUEST_TIMEOUT)
        try:
            status, data = call(conn, srv.endpoint.path, body)
            out[case] = {"status": status, "body": data[:400].decode(errors="replace")}
        except (OSError, http.client.HTTPException) as e:
            out[case] = {"status": None, "body": f"no answer: {e}"}
        finally:
            conn.close()
    return out


def answers(srv: PeerServer) -> list[Json | str]:
    """The normalized answers to CHECKS (a string where one is not a 200 or cannot be normalized)."""
    got: list[Json | str] = []
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=REQUEST_TIMEOUT)
    try:
        for params in CHECKS:
            status, data = call(conn, srv.endpoint.path, srv.endpoint.encode(params))
            try:
                if status != 200:
                    raise ValueError(f"status {status}")
                got.append(srv.endpoint.normalize(json.loads(data)))
            except (ValueError, KeyError, TypeError) as e:
                got.append(f"{e}: {data[:200].decode(errors='replace')}")
    finally:
        conn.close()
    return got


def expected() -> list[Json | str]:
    """The answers to CHECKS of the notebook's cells (bench/peers/iris_model.py) run here, through JSON."""
    sys.path.insert(0, str(SERVICES))
    try:
        import iris_model
    finally:
        sys.path.remove(str(SERVICES))
    return [json.loads(json.dumps(iris_model.predict(**params))) for params in CHECKS]


FAILURES = (RuntimeError, OSError, ValueError, http.client.HTTPException)  # what drops one endpoint, not the run


def run(endpoints: list[Endpoint], args: argparse.Namespace, results: Json) -> None:
    """Start every usable endpoint (one after the other), check their answers agree, measure, record. An
    endpoint that fails (to start, to agree, or while measured) is dropped with a note in ``results["skipped"]``."""
    skipped: Json = results["skipped"]
    out: Json = results["endpoints"]
    servers: dict[str, PeerServer] = {}

    def drop(name: str, why: str) -> None:
        skipped[name] = why[:2000]
        _say(f"skip: {name}: {why[:2000]}")
        servers.pop(name, None)

    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nb2svc-peers-")))
        for ep in endpoints:
            _say(f"start: {ep.name} ...")
            try:
                srv = PeerServer(ep, venv_of(ep), args.clients, scratch)
            except (OSError, ValueError) as e:
                drop(ep.name, f"could not start: {e}")
                continue
            stack.callback(srv.stop)
            try:
                srv.wait_answer()
            except RuntimeError as e:
                drop(ep.name, f"did not answer: {e}")
                continue
            servers[ep.name] = srv
            out[ep.name]["ready_s"] = round(srv.ready_s or 0.0, 3)
            out[ep.name]["rss_ready_mib"] = rss_mib(srv.processes())

        reference = expected()
        conns = {}
        for name, srv in list(servers.items()):
            try:
                got = answers(srv)
                out[name]["answers_agree"] = got == reference
                if got != reference:
                    raise ValueError(f"its answers differ from the notebook's cells': {got} != {reference}")
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=REQUEST_TIMEOUT)
                stack.callback(conn.close)
                conns[name] = conn
                sequential(conn, srv.endpoint, args.warmup)
            except FAILURES as e:
                drop(name, str(e))
        names = list(servers)
        if not names:
            return

        _say(f"measure: 1 client, {args.rounds} rounds over {', '.join(names)} ...")
        lat: dict[str, list[float]] = {n: [] for n in names}
        wall = dict.fromkeys(names, 0.0)
        block = max(2, args.requests // args.rounds)
        for order in rotations(names, args.rounds):
            for name in (n for n in order if n in servers):
                try:
                    taken, seconds = sequential(conns[name], servers[name].endpoint, block)
                except FAILURES as e:
                    drop(name, f"failed while measured (1 client): {e}")
                    continue
                lat[name] += taken
                wall[name] += seconds

        _say(f"measure: {args.clients} clients, {args.rounds} rounds ...")
        clat: dict[str, list[float]] = {n: [] for n in names}
        cwall = dict.fromkeys(names, 0.0)
        refused: dict[str, list[str]] = {n: [] for n in names}
        per_client = max(1, args.requests // args.rounds // args.clients)
        for order in rotations(names, args.rounds):
            for name in (n for n in order if n in servers):
                srv = servers[name]
                try:
                    taken, seconds, no = concurrent(srv.port, srv.endpoint, args.clients, per_client)
                except FAILURES as e:
                    drop(name, f"failed while measured ({args.clients} clients): {e}")
                    continue
                clat[name] += taken
                cwall[name] += seconds
                refused[name] += no

        for name, srv in list(servers.items()):
            try:
                rec: Json = {"rss_mib": rss_mib(srv.processes()), "processes": len(srv.processes())}
                rec["sequential"] = summary(lat[name], wall[name])
                conc = rec["concurrent"] = summary(clat[name], cwall[name])
                conc |= {"clients": args.clients, "not_200": len(refused[name])}
                conc["not_200_examples"] = sorted(set(refused[name]))[:3]
                rec["bad_input"] = bad_inputs(srv)
            except FAILURES as e:
                drop(name, f"failed at the end: {e}")
                continue
            out[name] |= rec
        _say("stop: every server ...")


# -- the report ------------------------------------------------------------------------------------------------


def _ratio(value: float | None, base: float | None) -> str:
    if value is None:
        return "n/a"
    if not base:
        return f"{value:g}"
    return f"{value:g} ({value / base:.2f}x)"


def _find(value: Any, key: str) -> str | None:
    """The first string under ``key`` in a JSON value, depth first."""
    if isinstance(value, dict):
        if isinstance(value.get(key), str):
            return str(value[key])
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            if (found := _find(item, key)) is not None:
                return found
    return None


def gist(body: str) -> str:
    """What an answer says, short: its first ``msg``/``message``/``error`` (Cog: the prediction's status)."""
    try:
        value = json.loads(body)
    except ValueError:
        return body[:EXCERPT]
    if isinstance(value, dict) and value.get("status") in ("succeeded", "failed"):  # Cog's envelope
        return f"prediction {value['status']}" + (f": {value['error']}" if value.get("error") else "")
    field = _find(value, "field") or _loc(value)
    for key in ("msg", "message", "error"):
        if (found := _find(value, key)) is not None:
            return f"{field}: {found}" if field and not found.startswith(field) else found
    return body[:EXCERPT]


def _loc(value: Any) -> str | None:
    """The field a pydantic-style error names: the last string of the first ``loc``."""
    if isinstance(value, dict):
        loc = value.get("loc")
        if isinstance(loc, list) and loc and all(isinstance(x, str | int) for x in loc):
            last = loc[-1]
            return last if isinstance(last, str) and last != "body" else None
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            if (found := _loc(item)) is not None:
                return found
    return None


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def report(results: Json) -> str:
    m = results["machine"]
    eps: Json = {k: v for k, v in results["endpoints"].items() if "sequential" in v}
    base = eps.get("nb2svc")
    s = results["settings"]
    lines = [
        f"machine: {m['cpus']} CPUs, {m['cpu_model']}, Python {m['python']}; {s['requests']} requests per endpoint "
        f"and mode in {s['rounds']} interleaved rounds; ratios to nb2svc serve (default mode)"
        + ("; the client on CPU 0, the servers on the others (--pin)" if s.get("pin") else ""),
        "",
        "### iris_nearest, POST of one flower",
        "",
    ]

    def of(name: str, *keys: str) -> float | None:
        v: Any = eps[name]
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return v if isinstance(v, int | float) else None

    def b(*keys: str) -> float | None:
        return of("nb2svc", *keys) if base else None

    rows = []
    for name, r in eps.items():
        versions = r.get("versions") or {}
        dist = VERSIONED.get(name)
        label = r["label"] + (f" {versions[dist]}" if dist in versions else "")
        refused = r["concurrent"].get("not_200", 0)
        rows.append(
            [
                label,
                _ratio(of(name, "sequential", "p50_ms"), b("sequential", "p50_ms")),
                _ratio(of(name, "sequential", "p90_ms"), b("sequential", "p90_ms")),
                _ratio(of(name, "sequential", "p99_ms"), b("sequential", "p99_ms")),
                _ratio(of(name, "sequential", "requests_per_s"), b("sequential", "requests_per_s")),
                _ratio(of(name, "concurrent", "requests_per_s"), b("concurrent", "requests_per_s"))
                + (f", {refused} not 200" if refused else ""),
                _ratio(of(name, "rss_mib"), b("rss_mib")) + f", {r['processes']} proc",
                _ratio(of(name, "ready_s"), b("ready_s")),
            ]
        )
    lines.append(
        table(
            [
                "endpoint",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "req/s, 1 client",
                f"req/s, {s['clients']} clients",
                "RSS MiB (tree)",
                "first answer after start, s",
            ],
            rows,
        )
    )
    lines += ["", "### Bad input: status, and what the answer says (its first msg, message or error)", ""]
    rows = [
        [r["label"]]
        + [
            _cell(f"{a['status']} " + (g if len(g := gist(a["body"])) <= EXCERPT else g[:EXCERPT] + "…"))
            for a in r["bad_input"].values()
        ]
        for r in eps.values()
    ]
    lines.append(table(["endpoint", *BAD_INPUTS], rows))
    if results["skipped"]:
        lines += ["", "Skipped:"] + [f"- {k}: {_cell(v)[:600]}" for k, v in results["skipped"].items()]
    notes = [f"- {k}: {v['note']}" for k, v in results["endpoints"].items() if v.get("note")]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per endpoint and mode")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds the requests are split into")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (threads) of the second mode")
    parser.add_argument("--warmup", type=int, default=200, help="requests per endpoint before measuring")
    parser.add_argument("--only", help="comma-separated endpoints: " + ",".join(e.name for e in ENDPOINTS))
    parser.add_argument("--skip-install", action="store_true", help="use the peers' venvs as made; make none")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--pin", action="store_true", help="the client on the first CPU, the servers on the others")
    args = parser.parse_args(argv)
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs 2 CPUs or more")
        os.sched_setaffinity(0, cpus[:1])  # the client threads, made later, inherit it
        PIN_SERVERS[:] = ["taskset", "-c", ",".join(map(str, cpus[1:]))]

    chosen = ENDPOINTS
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {e.name for e in ENDPOINTS})
        if unknown:
            parser.error(f"unknown endpoint(s) {', '.join(unknown)}; known: {', '.join(e.name for e in ENDPOINTS)}")
        chosen = [e for e in ENDPOINTS if e.name in wanted]

    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so every server started is stopped on the way out.
    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    started = time.perf_counter()
    results: Json = {
        "machine": machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "endpoints": {},
        "skipped": {},
    }
    usable = []
    for ep in chosen:
        versions: Json = {"nb2svc": metadata.version("nb2svc")} if not ep.requirements else {}
        if ep.requirements:
            got, why = install(ep, args.skip_install)
            if got is None:
                results["skipped"][ep.name] = why
                _say(f"skip: {ep.name}: {why}")
                continue
            versions = got
        results["endpoints"][ep.name] = {
            "label": ep.label,
            "versions": versions,
            "requirements": list(ep.requirements),
            "note": ep.note,
        }
        usable.append(ep)
    run(usable, args, results)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"\n(elapsed {results['elapsed_s']} s; JSON in {args.output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
