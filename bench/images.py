"""nb2svc's image benchmarks, in one bounded run (about 2.5-3 minutes on 2 cores):

    python bench/images.py              # everything below; --help for the knobs
    python bench/images.py --profile    # only: the openfaas backend's request, part by part, in-process

For both backends (kernel-gateway, openfaas), on a copy of sample_notebooks/iris_nearest.ipynb, built on
nb2svc-test/base:cpu with the library API (nb2svc.render.render, nb2svc.build.build, nb2svc.image.connect):

1. Builds: a cold build (``no_cache=True``); rebuilds of the same content to the same tag (the library only
   re-tags) and to a new tag; a rebuild after a code edit (a comment line appended to the first code cell below
   the parameters cell), with the steps it took from Docker's cache.
2. Sizes: the function image against its base, its own layers, the base and the OS image.
3. Start: from ``containers.run`` (port published on 127.0.0.1) to the first 200 on ``/health``, 3 starts each.
4. Latency of ``POST /invoke`` (one keep-alive client each, sequential, interleaved rounds) against baselines in
   containers of the same base image: a bare Kernel Gateway notebook-http endpoint doing the same work
   (bench/notebooks/bare_kg_iris.ipynb, written here from the sample's setup cells) for kernel-gateway, and a
   hand-written Starlette endpoint (bench/handwritten_iris.py) for openfaas. Rows marked "diagnostic" say
   where the time goes (two variants of the bare notebook); the openfaas image is also measured with
   ``NB2SVC_WORKERS=0`` (serving in the server's own process, no worker round trip).

Needs what ``scripts/docker-setup`` makes (dockerd, nb2svc-test/debian:bookworm); builds nb2svc-test/base:cpu
when it is missing. Prints markdown tables, writes every figure as JSON to /tmp/nb2svc-bench-images.json.
Every container it starts listens on 127.0.0.1 only and is removed before it exits, on error too; the image
tags it makes (nb2svc-bench/*) are removed at the end unless ``--keep-images``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_notebook
from profile_serving import time_async
from run import free_port, machine, percentile, post_invoke, request, server_time, table

from nb2svc import inspect_notebook
from nb2svc.build import CONTEXT_LABEL, build
from nb2svc.image import build_base, connect, host_pip_settings
from nb2svc.render import BACKENDS, Backend, BuildOptions, render

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SAMPLE = ROOT / "sample_notebooks" / "iris_nearest.ipynb"
BARE_NB = BENCH / "notebooks" / "bare_kg_iris.ipynb"
HANDWRITTEN = BENCH / "handwritten_iris.py"
RESULTS = Path("/tmp/nb2svc-bench-images.json")  # noqa: S108  # the path the docs name

OS_IMAGE = "nb2svc-test/debian:bookworm"
BASE = "nb2svc-test/base:cpu"
TAG = "nb2svc-bench/iris-{backend}:{what}"
BENCH_LABEL = {"nb2svc.bench": "images"}  # on every container this script starts

BODY = json.dumps({"features": [6.7, 3.0, 5.2, 2.3]}).encode()
HEADERS = {"Content-Type": "application/json"}
EXPECTED_LABEL = "virginica"
READY_TIMEOUT = 120.0  # seconds for a container to answer 200
REQUEST_TIMEOUT = 30.0
MB = 1_000_000  # Docker's own unit for sizes ("318MB")

Json = dict[str, Any]


# -- the baselines' files ----------------------------------------------------------------------------------------


def _endpoint_body() -> tuple[list[str], str]:
    """The sample's setup cells (every code cell above its parameters cell), and the code of a notebook-http
    endpoint that parses ``REQUEST`` itself and runs the sample's prediction and outputs code: no validation."""
    sample = nbformat.read(SAMPLE, as_version=4)
    code = [c for c in sample.cells if c.cell_type == "code"]
    tags = [c.metadata.get("tags", []) for c in code]
    params = next(i for i, t in enumerate(tags) if "parameters" in t)
    outputs = next(i for i, t in enumerate(tags) if "outputs" in t)
    prediction = "\n\n".join(c.source for c in code[params + 1 : outputs])
    body = (
        "req = json.loads(REQUEST)\n"
        'features = req["body"]["features"]\n'
        'metric = "euclidean"  # the parameters cell\'s defaults\n'
        "top_k = 3\n\n"
        f"{prediction}\n\n"
        "print(json.dumps({\n"
        '    "label": best,\n'
        '    "distance": round(distances[best], 4),\n'
        '    "scores": {s: round(weights[s] / total, 4) for s in ranked[:top_k]},\n'
        "}))"
    )
    return [c.source for c in code[:params]], body


def _gateway_notebook(cells: Sequence[str]) -> nbformat.NotebookNode:
    nb: nbformat.NotebookNode = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [new_code_cell(source) for source in cells]
    for i, cell in enumerate(nb.cells):
        cell.id = f"bare-{i}"  # fixed ids: rewriting it changes no byte
    return nb


def bare_notebook(variant: str = "") -> nbformat.NotebookNode:
    """bench/notebooks/bare_kg_iris.ipynb: ``import json``, the sample's setup cells, one ``# POST /invoke`` cell
    holding the endpoint's code. Two diagnostic variants (not stored):

    - ``"function"``: the endpoint's code is a function defined once; the endpoint cell only calls it (IPython
      then compiles one line per request instead of the 27-line cell);
    - ``"response_info"``: the bare notebook plus a ``# ResponseInfo POST /invoke`` cell printing a fixed status
      and content type, the third kernel execution per request that nb2svc's generated notebook makes.
    """
    setup, body = _endpoint_body()
    cells = ["import json  # the endpoint cell parses REQUEST and prints JSON", *setup]
    if variant == "function":
        indented = "\n".join(f"    {line}" if line else "" for line in body.splitlines())
        cells += [f"def invoke(REQUEST: str) -> None:\n{indented}", "# POST /invoke\ninvoke(REQUEST)"]
    else:
        cells.append(f"# POST /invoke\n{body}")
    if variant == "response_info":
        cells.append(
            "# ResponseInfo POST /invoke\n"
            'print(json.dumps({"status": 200, "headers": {"Content-Type": "application/json"}}))'
        )
    return _gateway_notebook(cells)


def write_bare_notebook() -> None:
    text = nbformat.writes(bare_notebook())
    if not BARE_NB.is_file() or BARE_NB.read_text() != text:
        BARE_NB.parent.mkdir(exist_ok=True)
        BARE_NB.write_text(text)


# -- helpers ---------------------------------------------------------------------------------------------------


def _s(seconds: float) -> float:
    return round(seconds, 3)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _mb(size: int) -> float:
    return round(size / MB, 2)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def step_cache(log: Sequence[str]) -> list[Json]:
    """The build's steps, from its "Step N/M : ..." lines: whether each took Docker's cache ("Using cache").
    FROM and the global ARG have no cache (``None``)."""
    steps: list[Json] = []
    for line in log:
        if line.startswith("Step "):
            instruction = line.split(" : ", 1)[1] if " : " in line else line
            no_cache = instruction.startswith("FROM ") or (not steps and instruction.startswith("ARG "))
            steps.append({"step": instruction, "cached": None if no_cache else False})
        elif steps and "Using cache" in line and steps[-1]["cached"] is not None:
            steps[-1]["cached"] = True
    return steps


def _short(instruction: str, width: int = 70) -> str:
    text = " ".join(instruction.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def layers_above(client: Any, ref: str, base: str) -> list[Json]:
    """The image's layers above ``base``: what made each, and its size."""
    history = client.images.get(ref).history()  # newest first
    above = history[: len(history) - len(client.images.get(base).history())]
    out = []
    for h in reversed(above):
        made_by = h.get("CreatedBy", "").replace("/bin/sh -c #(nop) ", "").strip()
        out.append({"created_by": made_by, "size_bytes": int(h.get("Size", 0))})
    return out


def wait_200(container: Any, port: int, method: str = "GET", path: str = "/health", body: bytes | None = None) -> float:
    """Poll until ``method path`` answers 200 (every 10 ms); the perf_counter time it did."""
    deadline = time.perf_counter() + READY_TIMEOUT
    polls = 0
    while time.perf_counter() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if request(port, method, path, body, timeout=2)[0] == 200:
                return time.perf_counter()
        polls += 1
        if polls % 50 == 0:
            container.reload()
            if container.status == "exited":
                raise RuntimeError(f"{container.name} exited:\n{container.logs(tail=30).decode(errors='replace')}")
        time.sleep(0.01)
    raise RuntimeError(f"{container.name} did not answer 200 within {READY_TIMEOUT:g} s")


class Containers:
    """Starts containers with their port 8080 published on 127.0.0.1; removes every one of them at ``close``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.started: list[Any] = []

    def run(self, image: str, **kwargs: Any) -> tuple[Any, int]:
        port = free_port()
        container = self.client.containers.run(
            image,
            detach=True,
            ports={"8080/tcp": ("127.0.0.1", port)},
            labels=BENCH_LABEL,
            name=f"nb2svc-bench-{uuid.uuid4().hex[:8]}",
            **kwargs,
        )
        self.started.append(container)
        return container, port

    def remove(self, container: Any) -> None:
        with contextlib.suppress(Exception):  # already gone
            container.remove(force=True)
        if container in self.started:
            self.started.remove(container)

    def close(self) -> None:
        for container in list(self.started):
            self.remove(container)


# -- 1 and 2: builds and sizes ---------------------------------------------------------------------------------


def _timed_build(
    client: Any, nb_path: Path, out: Path, backend: Backend, tag: str, *, no_cache: bool = False
) -> tuple[Json, list[str], str]:
    log: list[str] = []
    t0 = time.perf_counter()
    context = render(inspect_notebook(nb_path), out, BuildOptions(backend=backend, base=BASE), tag)
    t1 = time.perf_counter()
    image = build(context, tag, client=client, no_cache=no_cache, progress=log.append)
    t2 = time.perf_counter()
    figures = {
        "render_s": _s(t1 - t0),
        "build_s": _s(t2 - t1),
        "total_s": _s(t2 - t0),
        "cached": image.cached,
        "image_id": image.id,
    }
    return figures, log, image.id


def edit_code(nb_path: Path) -> str:
    """Append a comment line (new on every run) to the first code cell below the parameters cell."""
    nb = nbformat.read(nb_path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    cell = code[params + 1]
    cell.source += f"\n# a code edit, new on every run: {uuid.uuid4()}"
    nbformat.write(nb, nb_path)
    return str(cell.get("id", params + 1))


def bench_builds(client: Any, backend: Backend, tmp: Path, tags: list[str]) -> Json:
    """Cold build, no-op rebuilds (same tag, then a new tag), code-edit rebuild; the image's size."""
    work = tmp / backend
    work.mkdir()
    nb_path = work / SAMPLE.name
    shutil.copy2(SAMPLE, nb_path)
    dev, again, edit = (TAG.format(backend=backend, what=w) for w in ("dev", "v2", "edit"))
    tags += [dev, again, edit]
    out: Json = {}

    say(f"{backend}: cold build (no_cache=True) ...")
    out["cold"], log, cold_id = _timed_build(client, nb_path, work / "ctx-cold", backend, dev, no_cache=True)
    out["cold"]["steps"] = len(step_cache(log))

    say(f"{backend}: rebuild, same content, same tag ...")
    out["noop"], log, noop_id = _timed_build(client, nb_path, work / "ctx-noop", backend, dev)
    out["noop"]["log"] = log
    out["noop"]["same_image_as_cold"] = noop_id == cold_id  # or an older image of the same content

    say(f"{backend}: rebuild, same content, a new tag ...")
    out["noop_new_tag"], log, _ = _timed_build(client, nb_path, work / "ctx-v2", backend, again)
    out["noop_new_tag"]["log"] = log

    say(f"{backend}: rebuild after a code edit ...")
    edited = edit_code(nb_path)
    out["edit"], log, _ = _timed_build(client, nb_path, work / "ctx-edit", backend, edit)
    out["edit"]["edited_cell"] = edited
    steps = step_cache(log)
    out["edit"]["steps"] = steps
    out["edit"]["cached_steps"] = sum(1 for s in steps if s["cached"])
    out["edit"]["rebuilt_steps"] = [s["step"] for s in steps if s["cached"] is False]

    size = int(client.images.get(dev).attrs["Size"])
    base_size = int(client.images.get(BASE).attrs["Size"])
    out["size"] = {
        "image_bytes": size,
        "base_bytes": base_size,
        "over_base_bytes": size - base_size,
        "layers_above_base": layers_above(client, dev, BASE),
    }
    return out


def noop_parts(client: Any) -> Json:
    """What a no-op rebuild spends its time on, outside Docker's build: medians of 3."""
    with tempfile.TemporaryDirectory(prefix="nb2svc-bench-pip-") as tmp:
        pip = []
        for _ in range(3):
            t0 = time.perf_counter()
            host_pip_settings(Path(tmp))
            pip.append(time.perf_counter() - t0)
    lookup = []
    for _ in range(3):
        t0 = time.perf_counter()
        client.images.list(filters={"label": f"{CONTEXT_LABEL}=0"})
        lookup.append(time.perf_counter() - t0)
    return {
        "host_pip_settings_s": _s(statistics.median(pip)),
        "label_lookup_s": _s(statistics.median(lookup)),
        "daemon_images_all": len(client.images.list(all=True)),
    }


# -- 3: start to first 200 -------------------------------------------------------------------------------------


def bench_start(containers: Containers, refs: dict[str, str], starts: int) -> Json:
    """``starts`` starts per image, alternating between the images: run → first 200 on /health."""
    records: dict[str, list[Json]] = {name: [] for name in refs}
    for i in range(starts):
        for name, ref in refs.items():
            say(f"start {i + 1}/{starts}: {name} ...")
            t0 = time.perf_counter()
            container, port = containers.run(ref)
            t1 = time.perf_counter()
            try:
                t2 = wait_200(container, port)
            finally:
                containers.remove(container)
            records[name].append({"run_returned_s": _s(t1 - t0), "first_200_s": _s(t2 - t0)})
            time.sleep(0.5)  # the removed container's teardown is not measured
    return {
        name: {"starts": recs, "median_first_200_s": _s(statistics.median(r["first_200_s"] for r in recs))}
        for name, recs in records.items()
    }


# -- 4: request latency ----------------------------------------------------------------------------------------


def sequential(conn: http.client.HTTPConnection, count: int) -> tuple[list[float], int]:
    """``count`` requests one after the other on a keep-alive connection: latencies (s), reconnections.

    The connection is opened afresh, with one request not timed, first: uvicorn closes a connection idle for
    5 s (its ``timeout_keep_alive``), which an endpoint's connection is while the others answer their blocks.
    """
    conn.close()
    post_invoke(conn, BODY)
    latencies = []
    reconnects = 0
    for _ in range(count):
        sock = conn.sock
        t = time.perf_counter()
        post_invoke(conn, BODY)
        latencies.append(time.perf_counter() - t)
        reconnects += sock is not None and conn.sock is not sock
    return latencies, reconnects


def _answer(data: bytes) -> Json:
    """The part of an answer every endpoint gives: label, distance, scores."""
    got = json.loads(data)
    return {k: got.get(k) for k in ("label", "distance", "scores")}


KG = "nb2svc kernel-gateway"
BARE = "bare notebook-http"
BARE_FN = "bare notebook-http, endpoint calls a function (diagnostic)"
BARE_INFO = "bare notebook-http + ResponseInfo cell (diagnostic)"
OF = "nb2svc openfaas"
OF_INPROCESS = "nb2svc openfaas, NB2SVC_WORKERS=0"
HAND = "hand-written Starlette"


def start_endpoints(containers: Containers, refs: dict[str, str], tmp: Path) -> dict[str, tuple[int, float]]:
    """Every endpoint in a container of its own: name → (port, seconds from ``containers.run`` to first 200)."""
    mounts = {
        str(BARE_NB): {"bind": "/srv/bare/bare_kg_iris.ipynb", "mode": "ro"},
        str(HANDWRITTEN): {"bind": "/srv/bare/handwritten_iris.py", "mode": "ro"},
    }
    for variant in ("function", "response_info"):
        path = tmp / f"bare_kg_iris_{variant}.ipynb"
        nbformat.write(bare_notebook(variant), path)
        path.chmod(0o644)
        mounts[str(path)] = {"bind": f"/srv/bare/{path.name}", "mode": "ro"}

    def gateway(notebook: str) -> list[str]:
        return [
            "jupyter",
            "kernelgateway",
            "--KernelGatewayApp.api=kernel_gateway.notebook_http",
            f"--KernelGatewayApp.seed_uri=/srv/bare/{notebook}",
            # 0.0.0.0 of the container's own network namespace: reachable only through the port published on
            # the host's 127.0.0.1, the same path as nb2svc's images (127.0.0.1 would be unreachable from outside).
            "--KernelGatewayApp.ip=0.0.0.0",
            "--KernelGatewayApp.port=8080",
            "--KernelGatewayApp.prespawn_count=1",  # as nb2svc's kernel-gateway image (kernels=1)
        ]

    handwritten = ["python3", "/srv/bare/handwritten_iris.py", "--host", "0.0.0.0", "--port", "8080"]  # noqa: S104
    specs: dict[str, tuple[str, dict[str, Any], str, str]] = {
        KG: (refs["kernel-gateway"], {}, "GET", "/health"),
        BARE: (BASE, {"command": gateway("bare_kg_iris.ipynb")}, "POST", "/invoke"),
        BARE_FN: (BASE, {"command": gateway("bare_kg_iris_function.ipynb")}, "POST", "/invoke"),
        BARE_INFO: (BASE, {"command": gateway("bare_kg_iris_response_info.ipynb")}, "POST", "/invoke"),
        OF: (refs["openfaas"], {}, "GET", "/health"),
        # the same image, serving in the server's own process (docs/notebook-contract.md §3)
        OF_INPROCESS: (refs["openfaas"], {"environment": {"NB2SVC_WORKERS": "0"}}, "GET", "/health"),
        HAND: (BASE, {"command": handwritten}, "GET", "/health"),
    }
    started = {}
    for name, (image, extra, _, _) in specs.items():
        say(f"latency: starting {name} ...")
        if image == BASE:  # as nb2svc's images run: uid 10001, read-only files
            extra = {**extra, "user": "10001", "working_dir": "/srv/bare", "volumes": mounts}
        t0 = time.perf_counter()
        started[name] = (*containers.run(image, **extra), t0)
    ready = {}
    for name, (container, port, t0) in started.items():
        _, _, method, route = specs[name]
        ready[name] = (port, wait_200(container, port, method, route, BODY if method == "POST" else None) - t0)
    return ready


def bench_latency(
    containers: Containers, refs: dict[str, str], tmp: Path, warmup: int, requests: int, rounds: int
) -> Json:
    """Start the endpoints, warm each up, then measure them in interleaved rounds (a block of requests from each,
    in a rotating order), so that the machine's noise falls on all of them alike."""
    endpoints = start_endpoints(containers, refs, tmp)
    names = list(endpoints)
    conns: dict[str, http.client.HTTPConnection] = {}
    answers = {}
    try:
        for name, (port, _) in endpoints.items():
            conns[name] = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
            answers[name] = _answer(post_invoke(conns[name], BODY))
            sequential(conns[name], warmup - 1)
        if len({json.dumps(a, sort_keys=True) for a in answers.values()}) != 1 or (
            answers[names[0]]["label"] != EXPECTED_LABEL
        ):
            raise RuntimeError(f"the endpoints disagree: {answers}")

        say(f"latency: {requests} requests each, in {rounds} interleaved rounds ...")
        lat: dict[str, list[float]] = {n: [] for n in names}
        reconnects = dict.fromkeys(names, 0)
        nb2svc = [KG, OF, OF_INPROCESS]  # they answer /metrics
        before = {n: server_time(endpoints[n][0]) for n in nb2svc}
        by_round: dict[str, list[float]] = {n: [] for n in names}  # each round's p50, s
        block = max(1, requests // rounds)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                got, again = sequential(conns[name], block)
                lat[name] += got
                reconnects[name] += again
                by_round[name].append(statistics.median(got))
        after = {n: server_time(endpoints[n][0]) for n in nb2svc}
    finally:
        for conn in conns.values():
            conn.close()

    out: Json = {"answer": answers[names[0]], "endpoints": {}}
    for name in names:
        xs = lat[name]
        figures: Json = {
            "requests": len(xs),
            "p50_ms": _ms(statistics.median(xs)),
            "p90_ms": _ms(percentile(xs, 90)),
            "p99_ms": _ms(percentile(xs, 99)),
            "mean_ms": _ms(statistics.fmean(xs)),
            "reconnections": reconnects[name],
            "ready_after_s": _s(endpoints[name][1]),
        }
        if name in before:
            spent, count = (x - y for x, y in zip(after[name], before[name], strict=True))
            figures["server_side_mean_ms"] = _ms(spent / count) if count else None
        out["endpoints"][name] = figures
    e = out["endpoints"]
    pairs = {"kg": (KG, BARE), "kg_vs_function": (KG, BARE_FN), "kg_vs_response_info": (KG, BARE_INFO)}
    pairs |= {"openfaas": (OF, HAND), "openfaas_workers_0": (OF_INPROCESS, HAND)}
    for key, (ours, theirs) in pairs.items():
        out[f"ratio_{key}_p50"] = round(e[ours]["p50_ms"] / e[theirs]["p50_ms"], 2)
        out[f"ratio_{key}_p99"] = round(e[ours]["p99_ms"] / e[theirs]["p99_ms"], 2)
        rounds_ratio = [a / b for a, b in zip(by_round[ours], by_round[theirs], strict=True)]
        out[f"ratio_{key}_p50_by_round"] = [round(x, 2) for x in rounds_ratio]
    return out


# -- --profile: where the openfaas backend's time goes, in-process ---------------------------------------------


def _median_us(fn: Callable[[], Awaitable[Any]]) -> Awaitable[float]:
    return time_async(fn, 2000)


def _asgi_post(app: Any) -> Callable[[], Awaitable[None]]:
    """A callable sending ``POST /invoke`` with BODY straight into an ASGI app (no socket, no HTTP parsing)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    scope: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST"}
    scope |= {"scheme": "http"}
    scope |= {"path": "/invoke", "raw_path": b"/invoke", "query_string": b"", "root_path": "", "headers": headers}
    scope |= {"client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

    async def call() -> None:
        messages = [{"type": "http.request", "body": BODY, "more_body": False}]
        status = 0

        async def receive() -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            status = message.get("status", status)

        await app(dict(scope), receive, send)
        if status != 200:
            raise RuntimeError(f"the app answered {status}")

    return call


async def _ready(core: Any) -> None:
    for _ in range(600):
        if getattr(core.executor, "state", "ok") == "ok":
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the notebook's setup did not finish")


async def profile_openfaas() -> list[tuple[str, float]]:
    """Each part of the openfaas backend's ``POST /invoke``, timed in this process (medians, µs).

    It imports nb2svc's internals (the openfaas server, Core, the executors) and follows their names: a
    diagnostic, like bench/profile_serving.py.
    """
    import os

    os.environ["NB2SVC_NOTEBOOK"] = str(SAMPLE)
    from handwritten_iris import app as handwritten

    from nb2svc.backends import openfaas
    from nb2svc.runtime.app import ASGIAdapter
    from nb2svc.runtime.core import Core, Request
    from nb2svc.runtime.inprocess import InProcessExecutor

    rows = [("hand-written Starlette app, whole request", await _median_us(_asgi_post(handwritten)))]
    # The server as the image runs it: its lifespan starts the core on this loop, then requests await it.
    lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()

    async def lifespan_send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    life = asyncio.ensure_future(openfaas._index({"type": "lifespan"}, lifespan.get, lifespan_send))
    await lifespan.put({"type": "lifespan.startup"})
    await started.wait()
    await _ready(openfaas._server_core)
    try:
        rows.append(("nb2svc openfaas server (`_index`), whole request", await _median_us(_asgi_post(openfaas._index))))
    finally:
        await lifespan.put({"type": "lifespan.shutdown"})
        await life
    # The synchronous handle(event, context), as python3-http's own index.py would call it: two thread hops.
    served = await asyncio.to_thread(openfaas._the_core)  # the backend's core, on its own thread's loop
    await asyncio.to_thread(served.run, _ready(served.core))
    try:

        async def nothing() -> None:
            pass

        rows.append(("  hop 1: `asyncio.to_thread` of a no-op", await _median_us(lambda: asyncio.to_thread(int))))
        rows.append(
            (
                "  hops 1+2: `to_thread` + `run_coroutine_threadsafe` of a no-op",
                await _median_us(lambda: asyncio.to_thread(served.run, nothing())),
            )
        )
        request = Request("POST", "/invoke", BODY, {}, dict(HEADERS))
        on_loop = served.run(_median_us(lambda: served.core.handle(request)))
        rows.append(("  `Core.handle` on the core's own loop (validation, worker, output check)", on_loop))
        values = json.loads(BODY)
        invoke = served.run(_median_us(lambda: served.core.executor.invoke(values)))
        rows.append(("    of which `ServingExecutor.invoke` (worker round trip, output check)", invoke))
    finally:
        served.run(served.core.close())
    spec, config = served.core.spec, served.core.config
    direct = Core(spec, config)
    await direct.start()
    try:
        await _ready(direct)
        rows.append(
            (
                "fix A: the same Core awaited on the server's loop (no hops)",
                await _median_us(_asgi_post(ASGIAdapter(direct))),
            )
        )
    finally:
        await direct.close()
    inprocess = Core(spec, config, InProcessExecutor(spec, config))
    await inprocess.start()
    rows.append(
        ("fix B: A, with the in-process executor (no worker)", await _median_us(_asgi_post(ASGIAdapter(inprocess))))
    )
    await inprocess.close()
    return rows


# -- report ----------------------------------------------------------------------------------------------------


def _yes(ok: bool) -> str:
    return "**yes**" if ok else "**NO**"


def report(results: Json) -> str:
    m = results["machine"]
    b, t = results["builds"], results["targets"]
    out = [f"machine: {m['cpus']} CPUs, {m['cpu_model']}, Python {m['python']}", "", "### Builds", ""]
    rows = []
    for backend in BACKENDS:
        r = b[backend]
        cacheable = sum(1 for s in r["edit"]["steps"] if s["cached"] is not None)

        def took(what: Json) -> str:
            return f"{what['total_s']} ({what['render_s']} + {what['build_s']}){'' if what['cached'] else ' built'}"

        rows.append(
            [
                backend,
                took(r["cold"]),
                took(r["noop"]),
                took(r["noop_new_tag"]),
                took(r["edit"]),
                f"{r['edit']['cached_steps']} of {cacheable}",
            ]
        )
    header = ["backend", "cold build (no_cache)", "no-op, same tag", "no-op, new tag", "code edit"]
    out += [
        'seconds: total (inspect + render, build()); "built": build() ran a Docker build, else it only re-tagged',
        "",
        table([*header, "code edit: steps from cache"], rows),
        "",
    ]
    for backend in BACKENDS:
        steps = b[backend]["edit"]["rebuilt_steps"]
        labels = [x for x in steps if x.startswith("LABEL ")]
        rebuilt = [f"`{_short(x, 40)}`" for x in steps if not x.startswith("LABEL ")]
        out.append(f"- {backend}, code edit rebuilt: {', '.join(rebuilt)} and {len(labels)} LABEL steps")
    n = results["noop_parts"]
    out += [
        "",
        f"no-op parts: host pip settings (`pip config list`, in render) {n['host_pip_settings_s']} s; the label "
        f"lookup `images.list(filters=label)` {n['label_lookup_s']} s over {n['daemon_images_all']} images "
        "(intermediate ones included) on the daemon",
    ]
    out += ["", "### Sizes (MB = 10^6 bytes)", ""]
    rows = []
    for backend in BACKENDS:
        s = b[backend]["size"]
        rows.append([backend, _mb(s["image_bytes"]), _mb(s["base_bytes"]), _mb(s["over_base_bytes"])])
    out.append(table(["image", "size MB", "base MB", "over base MB"], rows))
    out += [
        "",
        f"base `{BASE}`: {_mb(results['sizes']['base_bytes'])} MB; OS image `{OS_IMAGE}`: "
        f"{_mb(results['sizes']['os_bytes'])} MB",
        "",
    ]
    rows = []
    for backend in BACKENDS:
        for layer in b[backend]["size"]["layers_above_base"]:
            if layer["size_bytes"]:
                rows.append([backend, f"`{_short(layer['created_by'], 60)}`", round(layer["size_bytes"] / 1000, 1)])
    out += [
        table(["image", "layer above base", "kB"], rows),
        "",
        "### Start: containers.run → first 200 on /health",
        "",
    ]
    rows = []
    for name, r in results["start"].items():
        rows.append(
            [
                name,
                r["median_first_200_s"],
                ", ".join(str(x["first_200_s"]) for x in r["starts"]),
                statistics.median(x["run_returned_s"] for x in r["starts"]),
            ]
        )
    out += [table(["image", "median s", "each start, s", "containers.run returned after, s (median)"], rows), ""]
    lat = results["latency"]
    out += [f"### Latency: POST /invoke, {results['settings']['requests']} sequential keep-alive requests", ""]
    rows = []
    for name, r in lat["endpoints"].items():
        rows.append([name, r["p50_ms"], r["p90_ms"], r["p99_ms"], r.get("server_side_mean_ms", ""), r["ready_after_s"]])
    out += [table(["endpoint", "p50 ms", "p90 ms", "p99 ms", "nb2svc server-side mean ms", "ready after s"], rows), ""]
    comparisons = {"kg": (KG, BARE), "kg_vs_function": (KG, BARE_FN), "kg_vs_response_info": (KG, BARE_INFO)}
    comparisons |= {"openfaas": (OF, HAND), "openfaas_workers_0": (OF_INPROCESS, HAND)}
    for key, (ours, theirs) in comparisons.items():
        what = f"{ours} / {theirs}"
        by_round = lat[f"ratio_{key}_p50_by_round"]
        out.append(
            f"- {what}: p50 **{lat[f'ratio_{key}_p50']}x**, p99 {lat[f'ratio_{key}_p99']}x; "
            f"p50 ratio by round: {min(by_round)}-{max(by_round)}, median {round(statistics.median(by_round), 2)}"
        )
    out += [
        "",
        "### Targets",
        "",
        table(["target", "met?"], [[k, _yes(v)] for k, v in t.items()]),
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=3, help="container starts per backend")
    parser.add_argument("--warmup", type=int, default=200, help="requests per endpoint not measured")
    parser.add_argument("--requests", type=int, default=1000, help="requests per endpoint measured")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds the requests are split into")
    parser.add_argument("--keep-images", action="store_true", help="keep the nb2svc-bench/* tags")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--profile", action="store_true", help="only time the parts of the openfaas backend's request, in-process"
    )
    args = parser.parse_args(argv)
    if args.profile:
        rows = asyncio.run(profile_openfaas())
        print(table(["part of POST /invoke (openfaas backend, iris_nearest, in-process)", "median µs"], rows))
        return 0

    started = time.perf_counter()
    write_bare_notebook()
    client = connect()
    if not client.images.list(name=BASE):
        say(f"building {BASE} on {OS_IMAGE} first (not timed) ...")
        build_base(client, BASE, OS_IMAGE)
    results: Json = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "sizes": {
            "base_bytes": int(client.images.get(BASE).attrs["Size"]),
            "os_bytes": int(client.images.get(OS_IMAGE).attrs["Size"]),
        },
        "builds": {},
        "targets": {},
    }
    tags: list[str] = []
    containers = Containers(client)
    try:
        with tempfile.TemporaryDirectory(prefix="nb2svc-bench-images-") as tmp:
            for backend in BACKENDS:
                results["builds"][backend] = bench_builds(client, backend, Path(tmp), tags)
        results["noop_parts"] = noop_parts(client)
        refs = {backend: TAG.format(backend=backend, what="dev") for backend in BACKENDS}
        results["start"] = bench_start(containers, refs, args.starts)
        with tempfile.TemporaryDirectory(prefix="nb2svc-bench-images-") as tmp:
            results["latency"] = bench_latency(containers, refs, Path(tmp), args.warmup, args.requests, args.rounds)
    finally:
        containers.close()
        if not args.keep_images:
            for tag in reversed(tags):
                with contextlib.suppress(Exception):  # not there, or in use elsewhere
                    client.images.remove(tag)
        client.close()

    b, lat, t = results["builds"], results["latency"], results["targets"]
    for backend in BACKENDS:
        t[f"{backend}: no-op rebuild < 1 s"] = b[backend]["noop"]["cached"] and b[backend]["noop"]["total_s"] < 1
        t[f"{backend}: code-edit rebuild < 10 s"] = b[backend]["edit"]["total_s"] < 10
        t[f"{backend}: nb2svc's layers < 50 MB over base"] = b[backend]["size"]["over_base_bytes"] < 50 * MB
    t["kernel-gateway p50 within 1.2x of bare notebook-http"] = lat["ratio_kg_p50"] <= 1.2
    t["openfaas p50 within 1.5x of hand-written Starlette"] = lat["ratio_openfaas_p50"] <= 1.5
    t["openfaas p50 within 1.2x of hand-written Starlette (issue 12)"] = lat["ratio_openfaas_p50"] <= 1.2
    for backend in BACKENDS:  # issue 12: an image ready within 2.0 s
        t[f"{backend}: first 200 on /health within 2.0 s of containers.run"] = (
            results["start"][backend]["median_first_200_s"] <= 2.0
        )
    t["openfaas with NB2SVC_WORKERS=0: p50 within 1.5x of hand-written Starlette"] = (
        lat["ratio_openfaas_workers_0_p50"] <= 1.5
    )
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"\n(elapsed {results['elapsed_s']} s; JSON in {args.output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
