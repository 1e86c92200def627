"""Inputs by reference: a ``pathlib.Path`` parameter takes a URL over HTTP; the runtime fetches it and binds
the local file (a ``str`` of its absolute path, as the notebook's own default is a str).

- ``https://`` and ``http://``: fetched by httpx, at most ``NB2SVC_FETCH_MAX_BYTES`` in at most
  ``NB2SVC_FETCH_TIMEOUT`` seconds. The host is resolved first and every address checked: private, loopback,
  link-local, multicast, reserved and unspecified addresses are refused (no request is sent) unless
  ``NB2SVC_FETCH_ALLOW`` names them. The connection goes to the address checked (the URL holds the IP, the
  ``Host`` header and TLS's SNI the name), so a second DNS answer cannot send it elsewhere; redirects are
  followed by hand, each hop checked again, five at most.
- ``s3://bucket/key``: through boto3 with the standard AWS settings (``AWS_ENDPOINT_URL`` for MinIO or moto).
- ``file://`` URLs and plain paths name the server's own files: refused unless ``NB2SVC_ALLOW_FILE_URLS`` is set.

A value that cannot be fetched is a 422 naming the field and the reason (training: checked at ``POST /runs``
with a HEAD, fetched when the run starts, on whichever replica runs it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import httpx

from ..spec import ServiceSpec
from ..types import is_path
from .config import Config
from .errors import HTTPError

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(Exception):
    """A reference that cannot be fetched: the message names the field and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"parameter {field!r}: {reason}")
        self.field = field
        self.reason = reason

    def http(self) -> HTTPError:
        item = {"loc": ["body", self.field], "field": self.field, "type": "invalid", "msg": self.reason}
        return HTTPError(422, "validation_error", f"invalid parameters: {self}", detail=[item])


def path_parameters(spec: ServiceSpec) -> list[str]:
    return [p.name for p in spec.parameters if is_path(p.type)]


class References:
    """Fetch the Path parameters of one request or run."""

    def __init__(self, spec: ServiceSpec, config: Config) -> None:
        self.names = path_parameters(spec)
        self.config = config
        self._allow: list[Network] = []
        for item in config.fetch_allow:
            try:
                self._allow.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"NB2SVC_FETCH_ALLOW: {item!r} is not an address or network") from None

    @property
    def wanted(self) -> bool:
        return bool(self.names)

    async def bind(self, values: dict[str, Any], folder: Path) -> dict[str, Any]:
        """Serving: fetch every reference into ``folder``; the values with local paths; a 422 otherwise."""
        try:
            return (await self.fetch(values, folder))[0]
        except FetchError as e:
            raise e.http() from None

    async def check(self, values: Mapping[str, Any]) -> None:
        """Training, at ``POST /runs``: each reference is allowed and answers (a HEAD), within the size limit."""
        for name in self.names:
            if isinstance(values.get(name), str):
                try:
                    await self._one(name, values[name], None)
                except FetchError as e:
                    raise e.http() from None

    async def fetch(self, values: dict[str, Any], folder: Path) -> tuple[dict[str, Any], dict[str, str]]:
        """The values with each reference fetched into ``folder/NAME/``; and name → URL of what was fetched."""
        out, fetched = dict(values), {}
        for name in self.names:
            value = values.get(name)
            if isinstance(value, str):
                local = await self._one(name, value, folder / name)
                if local is not None:
                    out[name] = str(local)
                    if local != Path(value):
                        fetched[name] = value
        return out, fetched

    async def _one(self, name: str, value: str, folder: Path | None) -> Path | None:
        """Fetch one value into ``folder`` (None: only check it); the local file."""
        parts = urlsplit(value)
        scheme = parts.scheme.lower()
        try:
            async with asyncio.timeout(self.config.fetch_timeout):
                if scheme in {"http", "https"}:
                    return await self._http(name, value, folder)
                if scheme == "s3":
                    return await asyncio.to_thread(self._s3, name, parts.netloc, parts.path.lstrip("/"), folder)
        except TimeoutError:
            raise FetchError(name, f"{_short(value)} did not arrive within {self.config.fetch_timeout:g} s") from None
        if scheme in {"file", ""} and self.config.allow_file_urls:
            path = Path(unquote(parts.path) if scheme else value).absolute()
            if not path.is_file():
                raise FetchError(name, f"{path} is not a file on this server")
            return path
        if scheme in {"file", ""}:
            raise FetchError(
                name,
                "a local path names the server's own files: send an https:// or s3:// URL "
                "(file paths are accepted only where NB2SVC_ALLOW_FILE_URLS is set)",
            )
        raise FetchError(name, f"{scheme}:// is not a scheme nb2svc fetches: use https://, http:// or s3://")

    # http(s)
    async def _http(self, name: str, url: str, folder: Path | None) -> Path | None:
        context = ssl.create_default_context()  # the system's CAs, or SSL_CERT_FILE's
        # trust_env=False: a proxy would connect wherever it likes, past the address check
        async with httpx.AsyncClient(verify=context, trust_env=False, timeout=self.config.fetch_timeout) as client:
            for _ in range(MAX_REDIRECTS + 1):
                parts = urlsplit(url)
                if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
                    raise FetchError(name, f"{_short(url)} is not an http(s) URL with a host")
                port = parts.port or _port(parts.scheme)
                response = await self._send(
                    client, name, url, await self._addresses(name, parts.hostname, port), folder
                )
                try:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if folder is None and response.status_code in {405, 501}:
                        return None  # no HEAD here: the run's fetch will tell
                    if response.status_code != 200:
                        raise FetchError(name, f"{_short(url)} answered {response.status_code}")
                    self._check_size(name, url, response.headers.get("content-length"))
                    if folder is None:
                        return None
                    return await self._save(name, url, response, folder)
                finally:
                    await response.aclose()
        raise FetchError(name, f"{_short(url)}: more than {MAX_REDIRECTS} redirects")

    async def _send(
        self, client: httpx.AsyncClient, name: str, url: str, addresses: list[IPAddress], folder: Path | None
    ) -> httpx.Response:
        """The request to the first of the checked addresses that takes a connection (never another one)."""
        parts = urlsplit(url)
        port = parts.port or _port(parts.scheme)
        host = str(parts.hostname) if parts.port is None else f"{parts.hostname}:{parts.port}"
        problem: Exception | None = None
        for address in addresses:
            netloc = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
            request = client.build_request(
                "GET" if folder is not None else "HEAD",
                urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
                headers={"Host": host},
                extensions={"sni_hostname": parts.hostname},  # TLS checks the certificate against the name
            )
            try:
                return await client.send(request, stream=True)
            except httpx.ConnectError as e:
                problem = e
            except httpx.HTTPError as e:
                raise FetchError(name, f"{_short(url)} could not be fetched: {e or type(e).__name__}") from None
        raise FetchError(name, f"{_short(url)} could not be fetched: {problem or 'no address'}")

    async def _addresses(self, name: str, host: str, port: int) -> list[IPAddress]:
        """The addresses to connect to: every address the host resolves to must be allowed."""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise FetchError(name, f"host {host!r} could not be resolved: {e.strerror or e}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        for address in addresses:
            plain = address.ipv4_mapped or address if isinstance(address, ipaddress.IPv6Address) else address
            if _internal(plain) and not any(plain in net for net in self._allow):
                raise FetchError(
                    name,
                    f"host {host!r} is at {plain}, a private, loopback or link-local address: refused "
                    "(NB2SVC_FETCH_ALLOW lists the addresses a service may fetch from)",
                )
        return addresses

    def _check_size(self, name: str, url: str, length: str | None) -> None:
        if length and length.isdigit() and int(length) > self.config.fetch_max_bytes:
            raise FetchError(
                name,
                f"{_short(url)} is {int(length)} bytes, over NB2SVC_FETCH_MAX_BYTES ({self.config.fetch_max_bytes})",
            )

    async def _save(self, name: str, url: str, response: httpx.Response, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / _file_name(urlsplit(url).path)
        size = 0
        with path.open("wb") as f:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.config.fetch_max_bytes:
                    f.close()
                    path.unlink()
                    raise FetchError(
                        name, f"{_short(url)} is over NB2SVC_FETCH_MAX_BYTES ({self.config.fetch_max_bytes} bytes)"
                    )
                f.write(chunk)
        return path.absolute()

    # s3
    def _s3(self, name: str, bucket: str, key: str, folder: Path | None) -> Path | None:
        import boto3  # only where an s3:// reference is sent
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import BotoCoreError, ClientError

        url = f"s3://{bucket}/{key}"
        if not bucket or not key:
            raise FetchError(name, f"{_short(url)} names no object: use s3://BUCKET/KEY")
        timeout = self.config.fetch_timeout
        client = boto3.client("s3", config=BotoConfig(connect_timeout=timeout, read_timeout=timeout))
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            self._check_size(name, url, str(head.get("ContentLength", "")))
            if folder is None:
                return None
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / _file_name(key)
            client.download_file(bucket, key, str(path))
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
            raise FetchError(name, f"{_short(url)}: {code or 'error'} ({status})") from None
        except BotoCoreError as e:
            raise FetchError(name, f"{_short(url)} could not be fetched: {e}") from None
        return path.absolute()


def _internal(address: IPAddress) -> bool:
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _port(scheme: str) -> int:
    return 443 if scheme.lower() == "https" else 80


def _file_name(path: str) -> str:
    """The URL's last segment as a safe file name (the notebook may look at its extension)."""
    name = _SAFE_NAME.sub("_", PurePosixPath(unquote(path)).name)
    return name if name.strip("._") else "download"


def _short(url: str) -> str:
    return url if len(url) <= 200 else url[:200] + "…"
