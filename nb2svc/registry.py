"""The few Registry HTTP API v2 calls nb2svc needs: is a tag there, re-tag a manifest, list tags (publishing);
read a manifest, a blob and the catalog of repositories (``nb2svc models``, deploy/catalog.py).

A re-tag copies the manifest under a new tag (GET then PUT): the layers are already in the repository, so
nothing is pulled or pushed. Registries on 127.0.0.1 or localhost are spoken to over http, others over https.

Credentials are the ones ``docker login`` keeps (``$DOCKER_CONFIG/config.json`` or ``~/.docker``, credential
helpers included, read through the docker SDK), as ``docker push`` uses them. A registry answering 401
gets them as its challenge asks: ``Basic``, or ``Bearer`` (the token from the challenge's realm, for its
service and scope: Docker Hub, GHCR, Harbor, GitLab). Without credentials for it: a :class:`RegistryError`
that says to log in.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
from docker import auth as docker_auth

from .errors import RegistryError

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)
_ACCEPT = {"Accept": ", ".join(MANIFEST_TYPES)}
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
CATALOG_PAGE = 1000  # repositories asked for per /v2/_catalog page (the registry may send fewer)


@dataclass(frozen=True)
class Manifest:
    """A manifest as the registry sent it: an image manifest, or an index (manifest list) of them."""

    media_type: str
    digest: str  # Docker-Content-Digest: what ``name@digest`` pulls
    content: dict[str, Any]

    @property
    def is_index(self) -> bool:
        return "manifests" in self.content and "config" not in self.content


def credentials(host: str) -> tuple[str, str] | None:
    """``docker login``'s user and password for ``host``, if it has them (not an OAuth identity token)."""
    try:
        found = docker_auth.load_config().resolve_authconfig(host)
    except Exception:  # a broken config or credential helper: as if logged out
        return None
    if not found:
        return None
    entry = {k.lower(): v for k, v in found.items()}  # config.json's keys, or a credential helper's
    if entry.get("username") and entry.get("password") is not None:
        return str(entry["username"]), str(entry["password"])
    return None


@dataclass(frozen=True)
class Registry:
    host: str  # host[:port]
    timeout: float = 30.0
    _tokens: dict[str, str] = field(default_factory=dict, compare=False, repr=False)  # scope → bearer token

    @property
    def base_url(self) -> str:
        scheme = "http" if self.host.rsplit(":", 1)[0] in _LOCAL_HOSTS else "https"
        return f"{scheme}://{self.host}/v2"

    def digest(self, name: str, tag: str) -> str | None:
        """The manifest digest of ``name:tag``, or None when the registry has no such tag."""
        response = self._request("HEAD", f"{name}/manifests/{tag}", headers=_ACCEPT)
        if response.status_code == 404:
            return None
        self._check(response, f"{name}:{tag}")
        return response.headers.get("Docker-Content-Digest") or f"{name}:{tag}"

    def retag(self, name: str, tag: str, new_tags: tuple[str, ...]) -> str:
        """Put ``name:tag``'s manifest under each of ``new_tags``; returns its digest."""
        got = self._request("GET", f"{name}/manifests/{tag}", headers=_ACCEPT)
        self._check(got, f"{name}:{tag}")
        media_type = got.headers.get("Content-Type", MANIFEST_TYPES[0])
        for new in new_tags:
            put = self._request(
                "PUT", f"{name}/manifests/{new}", content=got.content, headers={"Content-Type": media_type}
            )
            self._check(put, f"{name}:{new}")
        return str(got.headers.get("Docker-Content-Digest", ""))

    def tags(self, name: str) -> list[str]:
        response = self._request("GET", f"{name}/tags/list")
        if response.status_code == 404:
            return []
        self._check(response, name)
        return sorted(response.json().get("tags") or [])

    def manifest(self, name: str, reference: str) -> Manifest | None:
        """``name``'s manifest for a tag or digest; None when the registry has no such repository or tag."""
        response = self._request("GET", f"{name}/manifests/{reference}", headers=_ACCEPT)
        what = f"{name}@{reference}" if reference.startswith("sha256:") else f"{name}:{reference}"
        if response.status_code == 404:
            return None
        self._check(response, what)
        content = self._json(response, what)
        media_type = content.get("mediaType") or response.headers.get("Content-Type", "").split(";")[0]
        return Manifest(str(media_type), str(response.headers.get("Docker-Content-Digest", "")), content)

    def blob(self, name: str, digest: str) -> bytes:
        """A blob of ``name`` (an image config, a layer), following the registry's redirect to its storage."""
        response = self._request("GET", f"{name}/blobs/{digest}", follow_redirects=True)
        self._check(response, f"{name}@{digest}")
        return response.content

    def catalog(self, page: int = CATALOG_PAGE) -> list[str]:
        """Every repository the registry lists (``/v2/_catalog``), page by page as its ``Link`` header says."""
        names: list[str] = []
        path = f"_catalog?n={page}"
        while path:
            response = self._request("GET", path)
            self._check(response, "the catalog of repositories")
            names += self._json(response, "the catalog").get("repositories") or []
            path = self._next_page(response.headers.get("Link", ""))
        return sorted(set(names))

    def _next_page(self, link: str) -> str:
        """The path under /v2/ of the page a ``Link: </v2/_catalog?last=x&n=100>; rel="next"`` names."""
        found = _NEXT_LINK.search(link)
        if not found:
            return ""
        url = httpx.URL(self.base_url + "/").join(found.group(1))  # relative, as the spec has it, or absolute
        path = url.raw_path.decode()
        return path.removeprefix("/v2/")

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise RegistryError(f"registry {self.host} sent something that is not a JSON object for {what}")
        return body

    def _request(self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        url = f"{self.base_url}/{path}"
        headers = dict(headers or {})
        try:
            response = self._send(method, url, headers, kw)
            if response.status_code == 401:  # once: answer the challenge, then the answer stands
                authorization = self._authorization(response.headers.get("WWW-Authenticate", ""))
                if authorization:
                    response = self._send(method, url, {**headers, "Authorization": authorization}, kw)
            return response
        except httpx.HTTPError as e:
            raise RegistryError(f"registry {self.host} did not answer {method} {url}: {e}", "is it running?") from e

    def _send(self, method: str, url: str, headers: dict[str, str], kw: dict[str, Any]) -> httpx.Response:
        return httpx.request(method, url, headers=headers, timeout=self.timeout, **kw)

    def _authorization(self, challenge: str) -> str | None:
        """The Authorization header for a 401's ``WWW-Authenticate``; None without credentials or a way."""
        scheme, _, rest = challenge.partition(" ")
        login = credentials(self.host)
        if scheme.lower() == "basic":
            if login is None:
                return None
            return "Basic " + base64.b64encode(":".join(login).encode()).decode()
        if scheme.lower() != "bearer":
            return None
        params = dict(_CHALLENGE_PARAM.findall(rest))
        realm = params.pop("realm", "")
        if not realm:
            return None
        key = f"{params.get('service', '')} {params.get('scope', '')}"
        if key not in self._tokens:
            try:  # anonymous when there is no login: public repositories still get a pull token
                got = httpx.get(realm, params=params, auth=login, timeout=self.timeout)
            except httpx.HTTPError as e:
                raise RegistryError(f"registry {self.host}'s token service {realm} did not answer: {e}") from e
            if got.status_code >= 400:
                return None  # the 401 stands, and says to log in
            body = got.json()
            token = body.get("token") or body.get("access_token")
            if not token:
                return None
            self._tokens[key] = str(token)
        return f"Bearer {self._tokens[key]}"

    def _check(self, response: httpx.Response, what: str) -> None:
        if response.status_code in (401, 403):
            logged_in = credentials(self.host) is not None
            raise RegistryError(
                f"registry {self.host} refused {what} ({response.status_code})",
                f"the login for {self.host} is not allowed this; check its rights"
                if logged_in
                else f"log in first: docker login {self.host} (nb2svc uses docker's credentials)",
            )
        if response.status_code >= 400:
            detail = response.text[:200]
            raise RegistryError(f"registry {self.host} answered {response.status_code} for {what}: {detail}")
