"""How `nb2svc serve` holds up against large and hostile bodies: the figures in docs/limits.md.

python bench/limits.py

Serves a one-parameter notebook (``items: list[int]``) on 127.0.0.1, sends each body once while a
second client polls /health, and prints the answer, its size, the time taken and the slowest /health.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import nbformat
from nbformat.v4 import new_code_cell, new_notebook

PORT = 18190


def _notebook(folder: Path) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        new_code_cell(""),
        new_code_cell("items: list[int] = [1]", metadata={"tags": ["parameters"]}),
        new_code_cell("n: int = len(items)", metadata={"tags": ["outputs"]}),
    ]
    path = folder / "limits.ipynb"
    nbformat.write(nb, path)
    return path


def _measure(url: str, name: str, body: bytes) -> None:
    result: dict[str, object] = {}

    def send() -> None:
        started = time.perf_counter()
        result["r"] = httpx.post(f"{url}/invoke", content=body, timeout=120)
        result["t"] = time.perf_counter() - started

    thread = threading.Thread(target=send)
    thread.start()
    slowest = 0.0
    while thread.is_alive():
        started = time.perf_counter()
        httpx.get(f"{url}/health", timeout=60)
        slowest = max(slowest, time.perf_counter() - started)
    thread.join()
    r = result["r"]
    assert isinstance(r, httpx.Response)
    print(
        f"| {name} | {len(body) / 1e6:.1f} MB | {r.status_code} | {len(r.content):,} B | {result['t']:.2f} s "
        f"| {slowest * 1000:.0f} ms |"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        nb = _notebook(Path(tmp))
        proc = subprocess.Popen(
            [sys.executable, "-m", "nb2svc.cli", "serve", str(nb), "--port", str(PORT)], stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{PORT}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            print("| body | size | status | answer | time | slowest /health meanwhile |")
            print("|---|---|---|---|---|---|")
            _measure(url, "1M empty lists into list[int]", json.dumps({"items": [[]] * 1_000_000}).encode())
            _measure(url, "1.2M ints (valid)", json.dumps({"items": list(range(1_200_000))}).encode())
            _measure(url, "4.9M one-digit ints (valid)", json.dumps({"items": [1] * 4_900_000}).encode())
            _measure(url, "nesting 100,000 deep", b"[" * 100_000 + b"]" * 100_000)
            _measure(url, "an int of 5,000 digits", b'{"items": [' + b"7" * 5000 + b"]}")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
