"""The few Registry HTTP API v2 calls publishing needs: is a tag there, re-tag a manifest, list tags.

A re-tag copies the manifest under a new tag (GET then PUT): the layers are already in the repository, so
nothing is pulled or pushed. Registries on 127.0.0.1 or localhost are spoken to over http, others over https.
Anonymous access only; a registry that asks for credentials gets a :class:`RegistryError` with a hint.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from .build import RegistryError

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)
_ACCEPT = {"Accept": ", ".join(MANIFEST_TYPES)}
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class Registry:
    host: str  # host[:port]
    timeout: float = 30.0

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

    def _request(self, method: str, path: str, **kw: object) -> httpx.Response:
        url = f"{self.base_url}/{path}"
        try:
            return httpx.request(method, url, timeout=self.timeout, **kw)  # type: ignore[arg-type]  # httpx's kwargs
        except httpx.HTTPError as e:
            raise RegistryError(f"registry {self.host} did not answer {method} {url}: {e}", "is it running?") from e

    def _check(self, response: httpx.Response, what: str) -> None:
        if response.status_code in (401, 403):
            raise RegistryError(
                f"registry {self.host} refused {what} ({response.status_code})",
                "nb2svc publish speaks to registries anonymously; use one that allows it",
            )
        if response.status_code >= 400:
            detail = response.text[:200]
            raise RegistryError(f"registry {self.host} answered {response.status_code} for {what}: {detail}")
