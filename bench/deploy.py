"""nb2svc's Swarm deploy, measured on the local swarm (run by hand, about 2-3 minutes on 2 cores):

    python bench/deploy.py                 # --replicas N (default 2), --rate R requests/s (default 25)

Builds two versions of a small serving notebook (openfaas backend, ``NB2SVC_WORKERS=0``, on
nb2svc-test/base:cpu), pushes them to 127.0.0.1:5000/nb2svc-bench-deploy/<run>, then, through the library
(``nb2svc.deploy.engine("swarm")``, as ``nb2svc deploy`` calls it):

1. deploy v1 with N replicas: seconds from the call to its return (every replica healthy and answering
   behind the load balancer), 3 times (destroyed in between; the load balancer image is built before);
2. a rolling update v1 → v2 with a client sending R requests/s at the URL throughout (until 3 s after the
   update returned): its duration, requests sent, failed;
3. one replica's container killed (SIGKILL) under the same load: seconds until Swarm has a new replica
   running and healthy, requests sent, failed.

Swarm's timings are the settings' defaults unless NB2SVC_SWARM_* say otherwise (the tests use 1 s health
checks and a 2 s monitor window; the figures below name what they ran with). Prints a markdown table and
writes the figures as JSON to /tmp/nb2svc-bench-deploy.json. Removes its deployment and image tags at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nbformat
from nbformat.v4 import new_code_cell, new_notebook
from run import machine, table

from nb2svc import inspect_notebook
from nb2svc.build import build, push
from nb2svc.deploy import DeployOptions, engine
from nb2svc.deploy.catalog import read_image
from nb2svc.image import build_base, connect
from nb2svc.render import BuildOptions, render

OS_IMAGE = "nb2svc-test/debian:bookworm"
BASE = "nb2svc-test/base:cpu"
RESULTS = Path("/tmp/nb2svc-bench-deploy.json")  # noqa: S108  # the path the docs name


def notebook(path: Path, version: str) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(new_code_cell(f"VERSION = {version!r}"))
    nb.cells.append(new_code_cell("x: int = 1", metadata={"tags": ["parameters"]}))
    nb.cells.append(new_code_cell("version: str = VERSION\ny: int = x * 2", metadata={"tags": ["outputs"]}))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


class Load:
    """``rate`` POST /invoke a second from a thread; counts answers and failures."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.period = url, 1 / rate
        self.sent = self.failed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                self.sent += 1
                try:
                    r = http.post(f"{self.url}/invoke", json={"x": 1})
                    if r.status_code != 200:
                        self.failed += 1
                        self.errors.append(f"{r.status_code} {r.text[:100]}")
                except httpx.HTTPError as e:
                    self.failed += 1
                    self.errors.append(type(e).__name__)
                self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--rate", type=float, default=25)
    args = parser.parse_args()
    client = connect()
    build_base(client, BASE, OS_IMAGE)
    run = uuid.uuid4().hex[:8]
    name = f"nb2svc-bench-{run}"
    refs: dict[str, str] = {}
    swarm = engine("swarm")
    results: dict[str, Any] = {"machine": machine(), "replicas": args.replicas, "rate": args.rate}
    results["settings"] = {k: v for k, v in os.environ.items() if k.startswith("NB2SVC_SWARM_")}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for version in ("v1", "v2"):
                ref = f"127.0.0.1:5000/nb2svc-bench-deploy/{run}/answer:{version}"
                nb = notebook(Path(tmp) / version / "answer.ipynb", version)
                options = BuildOptions(backend="openfaas", base=BASE, env=(("NB2SVC_WORKERS", "0"),))
                build(render(inspect_notebook(nb), Path(tmp) / version / "ctx", options, ref), ref, client=client)
                push(ref, client=client)
                refs[version] = ref
        v1, v2 = read_image(refs["v1"]), read_image(refs["v2"])

        starts = []
        for _ in range(3):
            t = time.monotonic()
            d = swarm.deploy(name, v1, DeployOptions(replicas=args.replicas))
            starts.append(time.monotonic() - t)
            if len(starts) < 3:
                swarm.destroy(name)
        results["deploy_s"] = starts

        with Load(d.url or "", args.rate) as load:
            time.sleep(2)
            t = time.monotonic()
            swarm.deploy(name, v2, DeployOptions())
            results["update_s"] = time.monotonic() - t
            time.sleep(3)
        results["update_requests"], results["update_failed"] = load.sent, load.failed
        results["update_errors"] = load.errors[:5]

        service = client.services.get(name)
        with Load(d.url or "", args.rate) as load:
            time.sleep(2)
            victim = client.containers.list(filters={"label": f"com.docker.swarm.service.name={name}"})[0]
            t = time.monotonic()
            victim.kill()
            while True:
                tasks = service.tasks(filters={"desired-state": "running"})
                ids = {(t_["Status"].get("ContainerStatus") or {}).get("ContainerID") for t_ in tasks}
                states = [t_["Status"]["State"] for t_ in tasks]
                if states == ["running"] * args.replicas and victim.id not in ids:
                    break
                time.sleep(0.2)
            results["heal_s"] = time.monotonic() - t
            time.sleep(3)
        results["kill_requests"], results["kill_failed"] = load.sent, load.failed
        results["kill_errors"] = load.errors[:5]
    finally:
        try:
            swarm.destroy(name)
        except Exception as e:  # nothing was deployed
            print(f"(destroy: {e})")
        for ref in refs.values():
            client.images.remove(ref, force=True)  # untags; Swarm may not have removed its containers yet
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"{args.replicas} replicas, {args.rate:g} requests/s, settings {results['settings'] or 'defaults'}")
    print(
        table(
            ["what", "seconds", "requests", "failed"],
            [
                ["deploy → all replicas healthy (3 runs)", " / ".join(f"{s:.1f}" for s in starts), "", ""],
                ["rolling update v1 → v2", f"{results['update_s']:.1f}", *_counts(results, "update")],
                ["replica killed → replaced, healthy", f"{results['heal_s']:.1f}", *_counts(results, "kill")],
            ],
        )
    )


def _counts(results: dict[str, Any], what: str) -> tuple[int, int]:
    return results[f"{what}_requests"], results[f"{what}_failed"]


if __name__ == "__main__":
    main()
