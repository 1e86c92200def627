"""Shared fixtures: notebooks on disk and real `nb2svc serve` processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

NOTEBOOKS = Path(__file__).parent / "notebooks"
ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Service:
    """A `nb2svc serve` subprocess and a client for it."""

    def __init__(
        self,
        notebook: Path,
        env: Mapping[str, str] | None = None,
        kind: str | None = None,
        command: list[str] | None = None,
        health: str = "/health",
    ) -> None:
        self.notebook = notebook
        self.command = command
        self.health = health
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.kind = kind
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def start(self, wait_for: tuple[int, ...] = (200,)) -> Service:
        cmd = self.command or [
            sys.executable,
            "-m",
            "nb2svc.cli",
            "serve",
            str(self.notebook),
            "--port",
            str(self.port),
        ]
        if self.kind:
            cmd += ["--kind", self.kind]
        self.env["PORT"] = str(self.port)
        self.proc = subprocess.Popen(cmd, env=self.env, start_new_session=True)
        deadline = time.monotonic() + 120  # kernels start slowly on a loaded 2-core machine
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"nb2svc serve exited with {self.proc.returncode}"
            try:
                if self.http.get(self.health).status_code in wait_for:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()  # a fixture that fails here never reaches its own stop()
        raise AssertionError(f"{self.notebook.name} never became healthy")

    def stop(self) -> None:
        self.http.close()
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return self.http.post(path, json=body, **kw)


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start services for one test; all are stopped after it."""
    started: list[Service] = []

    def start(
        notebook: Path, env: Mapping[str, str] | None = None, wait_for: tuple[int, ...] = (200,), **kw: Any
    ) -> Service:
        svc = Service(notebook, env, **kw)
        started.append(svc)
        return svc.start(wait_for)

    yield start
    for svc in started:
        svc.stop()


def conforms(openapi: dict[str, Any], path: str, method: str, response: httpx.Response) -> None:
    """Assert a response is one the OpenAPI document lists, with a body its schema accepts."""
    op = openapi["paths"][path][method]
    assert str(response.status_code) in op["responses"], f"{response.status_code} not documented for {method} {path}"
    content = op["responses"][str(response.status_code)].get("content", {})
    media = response.headers["content-type"].split(";")[0]
    assert media in content, f"{media} not documented for {response.status_code}"
    schema = content[media].get("schema")
    if schema and media == "application/json":
        registry: Registry = Registry().with_resource(
            "root", Resource.from_contents(openapi, default_specification=DRAFT202012)
        )
        validator = Draft202012Validator(
            {"$ref": "root" + schema["$ref"]} if "$ref" in schema else schema, registry=registry
        )
        errors = [e.message for e in validator.iter_errors(response.json())]
        assert not errors, errors


OS_IMAGE = "nb2svc-test/debian:bookworm"  # made by scripts/docker-setup (debootstrap, docker import)
BASE = "nb2svc-test/base:cpu"  # the nb2svc base the image tests build on


@pytest.fixture(scope="session")
def client() -> Iterator[Any]:
    """A Docker client, with the test base image built (cached by Docker after the first time)."""
    from nb2svc.image import build_base, connect

    try:
        c = connect()
    except Exception as e:
        pytest.fail(f"Docker is needed here (run scripts/docker-setup): {e}")
    build_base(c, BASE, OS_IMAGE)
    yield c
    c.close()


@pytest.fixture
def containers(client: Any) -> Iterator[list[str]]:
    """Ids of containers a test starts; removed after it (``client``: the test module's Docker client)."""
    started: list[str] = []
    yield started
    for cid in started:
        try:
            client.containers.get(cid).remove(force=True)
        except Exception:  # noqa: S110  # already gone
            pass


@pytest.fixture
def locked_registry(tmp_path: Path) -> Iterator[str]:
    """A second real registry (Debian's docker-registry) on 127.0.0.1 with htpasswd (Basic) auth:
    user ``robot``, password ``s3cret``."""
    with warnings.catch_warnings():  # the stdlib's bcrypt (via libcrypt), deprecated but in 3.11
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    port = free_port()
    bcrypt = crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH))  # noqa: S324  # bcrypt, as htpasswd -B
    (tmp_path / "htpasswd").write_text(f"robot:{bcrypt}\n")
    (tmp_path / "registry.yml").write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
        f"auth: {{htpasswd: {{realm: nb2svc-test, path: {tmp_path / 'htpasswd'}}}}}\n"
        "log: {level: warn}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(tmp_path / "registry.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 401:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("the registry with a login never answered")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def reads_the_body_as_json_whatever_its_content_type(svc: Service) -> None:
    """One contract for every backend (all_types.ipynb): the body is JSON, the Content-Type is not checked.

    `curl -d` sends application/x-www-form-urlencoded; `&`, `=`, `+` and `%41` must reach the notebook
    as written. Bytes that are not UTF-8 are a 400, like any body that is not JSON.
    """
    body = json.dumps({"features": [1, 2], "tag": "a&b=c+d %41 é"}).encode()
    for content_type in (
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/json; charset=utf-8",
        "application/octet-stream",
        None,
    ):
        headers = {"content-type": content_type} if content_type else {}
        r = svc.http.post("/invoke", content=body, headers=headers)
        assert r.status_code == 200, (content_type, r.text)
        assert r.json()["echo"]["tag"] == "a&b=c+d %41 é", content_type
    latin1 = '{"features": [1], "tag": "é"}'.encode("latin-1")
    for content_type in ("application/x-www-form-urlencoded", "application/json"):
        r = svc.http.post("/invoke", content=latin1, headers={"content-type": content_type})
        assert (r.status_code, r.json()["error"]) == (400, "invalid_json"), (content_type, r.text)


class Postgres:
    """A PostgreSQL server of the tests' own, on 127.0.0.1 in a temporary data directory (Debian's binaries)."""

    def __init__(self, bindir: Path, data: Path, port: int) -> None:
        self.bindir, self.data, self.port = bindir, data, port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def database(self, name: str) -> str:
        """A new, empty database (one per test: tests of one session share the server); its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}"')
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + "/" + name

    def _pg(self, *args: str) -> None:
        # initdb and the server refuse to run as root: the tests run as root, the server as user postgres
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def init(self) -> None:
        self.data.mkdir(parents=True)
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres:postgres", str(self.data.parent)], check=True)
        self._pg("initdb", "-D", str(self.data / "db"), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data} -c fsync=off"
        self._pg("pg_ctl", "-D", str(self.data / "db"), "-o", options, "-l", str(self.data / "log"), "-w", "start")

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data / "db"), "-m", "fast", "-w", "stop")


def postgres_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A real PostgreSQL for the session (scripts/services-setup installs it); skipped where it is missing."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (scripts/services-setup installs Debian's postgresql)")
    root = Path(tempfile.mkdtemp(prefix="nb2svc-pg-", dir="/tmp"))  # user postgres must reach it
    server = Postgres(bindir, root / "data", free_port())
    server.init()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


class RedisServer:
    """Debian's redis-server of the tests' own, on 127.0.0.1 in a temporary folder (AOF on, no RDB snapshots):
    a stop and a start keep its data, as a production Redis with persistence does."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen([self.binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        raise AssertionError("redis-server never answered")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis writes its AOF and exits
            self.proc.wait(15)

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            assert s.recv(16).startswith(b"+OK")


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        pytest.skip("redis-server is not installed (scripts/services-setup installs Debian's redis-server)")
    return found


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(_redis_binary(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_session: RedisServer) -> str:
    """A shared Redis for one test, emptied first (every test's services use the same key prefixes)."""
    redis_session.flush()
    return redis_session.url


@pytest.fixture
def redis_own(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, which the test may stop and start."""
    server = RedisServer(_redis_binary(), tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """moto's standalone S3 server on 127.0.0.1 (no S3 is packaged for these machines); the AWS settings
    that point boto3 at it. Each test makes its own bucket."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    yield env
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: dict[str, str], request: pytest.FixtureRequest) -> tuple[Any, str, dict[str, str]]:
    """(boto3 client, bucket name, env) for one test's own bucket on the moto server."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_server["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106  # moto accepts any
        region_name="us-east-1",
    )
    bucket = "nb2svc-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    client.create_bucket(Bucket=bucket)
    return client, bucket, s3_server
