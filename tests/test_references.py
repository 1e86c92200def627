"""Inputs by reference (SPEC section 7): a `Path` parameter fed a URL, fetched by the service, for serving and
training. An https server of the test's own on 127.0.0.1 (a trustme CA the service trusts through SSL_CERT_FILE),
moto's S3 server, and the address policy (NB2SVC_FETCH_ALLOW)."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nbformat
import pytest

from .conftest import NOTEBOOKS, Service, conforms

pytestmark = [
    pytest.mark.slow,
    # the test's own https server (http.server): a client that closes mid-handshake leaves its SSLSocket to the GC
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]
CSV = b"name,value\nx,1\ny,2\nz,3\n"
LIMIT = 1000  # NB2SVC_FETCH_MAX_BYTES in these tests


class _Files(BaseHTTPRequestHandler):
    def _answer(self, body: bool) -> None:
        if self.path == "/data.csv":
            self._send(200, CSV, body)
        elif self.path == "/big.bin":
            self._send(200, b"x" * (LIMIT * 5), body)
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/data.csv")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/to-metadata":  # a redirect to the cloud metadata address: each hop is checked
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"no such file", body)

    def _send(self, status: int, data: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, CA file): an https server for `localhost` on 127.0.0.1, its certificate from a test CA."""
    import trustme

    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("tls")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://localhost:{server.server_address[1]}", folder / "ca.pem"
    server.shutdown()


@pytest.fixture
def settings(https: tuple[str, Path], s3_bucket: tuple[Any, str, dict[str, str]]) -> dict[str, str]:
    client, bucket, aws = s3_bucket
    client.put_object(Bucket=bucket, Key="in/data.csv", Body=CSV)
    client.put_object(Bucket=bucket, Key="in/big.bin", Body=b"x" * (LIMIT * 5))
    return {
        **aws,
        "SSL_CERT_FILE": str(https[1]),
        "NB2SVC_FETCH_ALLOW": "127.0.0.1,::1",  # the test's server is on loopback: allowed here explicitly
        "NB2SVC_FETCH_MAX_BYTES": str(LIMIT),
        "NB2SVC_FETCH_TIMEOUT": "20",
        "BUCKET": bucket,
    }


def refusals(base: str, bucket: str) -> list[tuple[str, str]]:
    """(value, what the 422 says) for references that cannot be fetched."""
    return [
        (f"{base}/missing.csv", "answered 404"),
        (f"{base}/big.bin", "NB2SVC_FETCH_MAX_BYTES"),
        ("http://169.254.169.254/latest/meta-data/", "link-local address: refused"),
        (f"{base}/to-metadata", "link-local address: refused"),
        (f"s3://{bucket}/in/missing.csv", "404"),
        (f"s3://{bucket}/in/big.bin", "NB2SVC_FETCH_MAX_BYTES"),
        ("/etc/passwd", "a local path names the server's own files"),
        ("file:///etc/passwd", "a local path names the server's own files"),
        ("ftp://example.com/data.csv", "not a scheme nb2svc fetches"),
    ]


def test_serving_fetches_https_and_s3_references(
    serve: Callable[..., Service], https: tuple[str, Path], settings: dict[str, str]
) -> None:
    base = https[0]
    svc = serve(NOTEBOOKS / "path_serving.ipynb", settings)
    openapi = svc.http.get("/openapi.json").json()
    data = openapi["components"]["schemas"]["Parameters"]["properties"]["data"]
    assert (data["type"], data["format"]) == ("string", "uri") and "s3://" in data["description"]
    for url in (f"{base}/data.csv", f"{base}/moved", f"s3://{settings['BUCKET']}/in/data.csv"):
        r = svc.post("/invoke", {"data": url})
        assert r.status_code == 200, (url, r.text)
        assert (r.json()["rows"], r.json()["first"]) == (4, "name,value"), url
        local = Path(r.json()["local"])
        assert local.is_absolute() and local.name == "data.csv" and not local.exists()  # removed once answered
    for value, says in refusals(base, settings["BUCKET"]):
        r = svc.post("/invoke", {"data": value})
        assert r.status_code == 422, (value, r.text)
        conforms(openapi, "/invoke", "post", r)
        assert r.json()["detail"][0]["field"] == "data" and says in r.json()["detail"][0]["msg"], (value, r.text)
    assert svc.post("/invoke", {}).json()["rows"] == 3  # the notebook's own default: its local file


def test_loopback_is_refused_unless_allowed(
    serve: Callable[..., Service], https: tuple[str, Path], settings: dict[str, str]
) -> None:
    env = {k: v for k, v in settings.items() if k != "NB2SVC_FETCH_ALLOW"}
    svc = serve(NOTEBOOKS / "path_serving.ipynb", env)
    r = svc.post("/invoke", {"data": f"{https[0]}/data.csv"})
    assert r.status_code == 422 and "loopback" in r.json()["detail"][0]["msg"], r.text


def test_training_checks_at_post_and_fetches_at_run_start(
    serve: Callable[..., Service], https: tuple[str, Path], settings: dict[str, str], tmp_path: Path
) -> None:
    base = https[0]
    svc = serve(NOTEBOOKS / "path_training.ipynb", {**settings, "NB2SVC_RUNS_DIR": str(tmp_path / "runs")})
    openapi = svc.http.get("/openapi.json").json()
    for url in (f"{base}/data.csv", f"s3://{settings['BUCKET']}/in/data.csv"):
        run = svc.post("/runs?wait=60", {"data": url}).json()
        assert run["status"] == "succeeded", run
        assert run["parameters"] == {"data": url} and run["outputs"]["rows"] == 4
        assert Path(run["outputs"]["local"]).is_relative_to(tmp_path / "runs" / run["id"])
        nb = nbformat.reads(svc.http.get(run["links"]["notebook"]).text, as_version=4)
        (injected,) = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert f"# data: fetched from {url!r}" in injected.source
    for value, says in refusals(base, settings["BUCKET"]):
        r = svc.post("/runs", {"data": value})
        assert r.status_code == 422, (value, r.text)
        conforms(openapi, "/runs", "post", r)
        assert r.json()["detail"][0]["field"] == "data" and says in r.json()["detail"][0]["msg"], (value, r.text)
    assert len(svc.http.get("/runs").json()) == 2  # a refused reference starts no run


@pytest.mark.parametrize("annotation", ["Path", "pathlib.Path", "Optional[Path]", "Path | None", "'Path'"])
def test_path_is_a_uri_string_in_the_schema(annotation: str) -> None:
    import ast

    from nb2svc.types import is_path, parse_annotation

    t = parse_annotation(ast.parse(annotation, mode="eval").body)
    assert is_path(t)
    schema = t.schema()
    plain = schema if "anyOf" not in schema else schema["anyOf"][0]
    assert (plain["type"], plain["format"]) == ("string", "uri") and "s3://" in plain["description"]


@pytest.mark.parametrize("annotation", ["list[Path]", "dict[str, Path]", "Optional[list[Path]]"])
def test_path_inside_a_list_or_dict_is_refused(annotation: str) -> None:
    """The runtime fetches a parameter's own value only: a list of URLs would reach the notebook unfetched."""
    import ast

    from nb2svc.types import TypeNotSupported, parse_annotation

    with pytest.raises(TypeNotSupported, match="Path is a parameter's own type"):
        parse_annotation(ast.parse(annotation, mode="eval").body)


def test_the_prediction_log_keeps_the_reference_sent_not_the_fetched_copy(
    serve: Callable[..., Service], https: tuple[str, Path], settings: dict[str, str], tmp_path: Path
) -> None:
    from nb2svc.runtime.predictions import open_log

    log = f"sqlite:///{tmp_path / 'log.sqlite'}"
    svc = serve(NOTEBOOKS / "path_serving.ipynb", {**settings, "NB2SVC_LOG_URL": log})
    url = f"{https[0]}/data.csv"
    r = svc.post("/invoke", {"data": url})
    assert r.status_code == 200, r.text
    assert r.json()["local"] != url  # the notebook saw its local copy
    db = open_log(log)
    try:
        deadline = time.monotonic() + 30
        while not (rows := db.read("path_serving")):
            assert time.monotonic() < deadline, "the prediction was never written"
            time.sleep(0.1)
    finally:
        db.close()
    assert rows[0].parameters["data"] == url  # what the caller sent: a copy in a removed scratch folder means nothing
