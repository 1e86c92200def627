"""Base images: build nb2svc's base (``Dockerfile.base-cuda``) with the Docker SDK.

The base is the OS image plus a venv at ``/opt/nb2svc/venv`` holding the runtime's dependencies; function
images build on it. The build runs on the host's network with the host's pip settings (:func:`host_pip_settings`),
which exist only in the Dockerfile's ``build`` stage.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from . import __version__
from .errors import ExternalError, Nb2svcError

DEFAULT_BASE_IMAGE = "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"
# templates/Dockerfile.base-cuda (the repository's Dockerfile.base-cuda links to it), shipped in the package
DOCKERFILE = resources.files("nb2svc.templates") / "Dockerfile.base-cuda"

# What the base's venv holds: the dependencies of nb2svc.runtime (and its kernel-gateway backend), not nb2svc
# itself, so that a function image's nb2svc layer sits above them and an nb2svc upgrade reuses this layer.
RUNTIME_REQUIREMENTS = (
    "nbformat>=5.9",
    "nbclient>=0.10",
    "papermill>=2.6",
    "ipykernel>=6.29",
    "jupyter_kernel_gateway>=3.0",
    "jsonschema>=4.20",
    "starlette>=0.37",
    "uvicorn>=0.29",
    "httptools>=0.6",  # the HTTP parser of nb2svc's server (runtime/server.py); uvicorn serves `create_app`
    "uvloop>=0.19",
    "prometheus-client>=0.20",
    "msgspec>=0.18",
    "httpx>=0.27",  # Path parameters: https:// references are fetched by the runtime
    "psycopg[binary]>=3.1",  # NB2SVC_LOG_URL=postgresql://: replicas share one prediction log
    "redis>=5.0",  # NB2SVC_QUEUE_URL=redis://: training replicas share one queue (`--replicas 2` just works)
    "boto3>=1.34",  # NB2SVC_STORAGE_URL=s3:// and s3:// references
)

# pip settings that mean the same inside a container; find-links, constraints and file:// indexes name host
# paths, and cert is replaced by the copied bundle.
_PORTABLE_PIP_KEYS = ("index-url", "extra-index-url", "trusted-host", "timeout", "retries", "proxy")
_PIP_KEY_ALIASES = {"default-timeout": "timeout"}
# Lower sections first: pip applies [global], then the command's section, then PIP_* variables.
_PIP_SECTION_ORDER = ("global", "install", ":env:")
_SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Docker's predefined build arguments: passed to RUN steps but never written to the image's history.
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "FTP_PROXY", "ALL_PROXY")
_LOG_TAIL = 30
_DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


class DockerUnavailable(ExternalError):
    """The Docker daemon cannot be reached."""

    def __init__(self, detail: str, base_url: str | None = None) -> None:
        where = base_url or os.environ.get("DOCKER_HOST") or "the default socket"
        super().__init__(
            f"cannot reach the Docker daemon at {where}: {detail}",
            hint="start it (`sudo systemctl start docker`, or `scripts/docker-setup` on a bare Debian machine) "
            "or point DOCKER_HOST at a running one",
        )


class BuildError(Nb2svcError):
    """``docker build`` failed; ``log`` holds the failing step's last lines of output."""

    def __init__(self, message: str, log: Sequence[str] = (), hint: str | None = None) -> None:
        self.log = tuple(log)
        super().__init__("\n".join([message, *(f"  | {line}" for line in self.log)]), hint)


class ImageUnavailable(BuildError):
    """A ``FROM`` image could not be pulled: a registry is unreachable or does not have it."""

    exit_code = 3


def connect(base_url: str | None = None) -> Any:
    """A ``docker.DockerClient`` for ``base_url`` (default: the environment's), checked with a ping."""
    url = base_url or os.environ.get("DOCKER_HOST") or _DEFAULT_DOCKER_HOST
    # Checked here because the SDK leaks a socket when it fails to reach a missing one.
    if url.startswith("unix://") and not Path(url.removeprefix("unix://")).exists():
        raise DockerUnavailable(f"no socket at {url.removeprefix('unix://')}", url)
    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
    except docker.errors.DockerException as exc:
        raise DockerUnavailable(str(exc), base_url) from exc
    try:
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        client.close()
        raise DockerUnavailable(str(exc), base_url) from exc
    return client


def host_pip_settings(dest: Path, *, environ: Mapping[str, str] | None = None) -> None:
    """Write ``dest/pip.conf`` and ``dest/ca.pem``: the host's pip settings, as a container can use them.

    Behind a corporate, TLS-intercepting proxy pip in a container fails certificate checks and misses the
    private index unless it gets the host's CA bundle and index settings (this is also what makes builds work
    on nb2svc's own CI machines). The CA bundle is the first that exists of ``PIP_CERT``,
    ``REQUESTS_CA_BUNDLE``, ``SSL_CERT_FILE``, pip's ``cert`` setting and the system bundle; no ``ca.pem`` is
    written when none exists. ``pip.conf`` keeps index-url, extra-index-url, trusted-host, timeout, retries and
    proxy from the host's configuration (files and ``PIP_*`` variables, read through ``pip config list``), and
    drops file:// indexes, find-links and constraints, which name host paths that do not exist in a container.
    """
    env = os.environ if environ is None else environ
    config = _host_pip_config(env)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "pip.conf").write_text(pip_conf_text(config), encoding="utf-8")
    candidates = [env.get(name) for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")]
    candidates += [config.get("cert"), str(_SYSTEM_CA_BUNDLE)]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            shutil.copyfile(candidate, dest / "ca.pem")
            break


def pip_conf_text(config: Mapping[str, str]) -> str:
    """A pip.conf ``[global]`` section with the portable settings of ``config`` (pip's key names)."""
    lines = ["[global]"]
    for key in _PORTABLE_PIP_KEYS:
        value = config.get(key, "").strip()
        if key in ("index-url", "extra-index-url"):
            urls = [url for url in value.split() if url.startswith(("http://", "https://"))]
            if key == "index-url":
                urls = urls[:1]
            value = "\n    ".join(urls)
        if value:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def build_base(
    docker_client: Any,
    tag: str,
    from_image: str = DEFAULT_BASE_IMAGE,
    *,
    pip_settings: bool = True,
    wheelhouse: Path | None = None,
    requirements: Sequence[str] = RUNTIME_REQUIREMENTS,
    nocache: bool = False,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Build the base image ``tag`` on ``from_image`` and return its id.

    ``pip_settings`` carries the host's pip configuration and CA bundle into the build stage; ``wheelhouse``,
    a folder of wheels, is offered to pip with ``--find-links``; ``requirements`` replaces the runtime's list;
    ``nocache`` rebuilds every step. Each line of the build's output goes to ``progress``.
    """
    with tempfile.TemporaryDirectory(prefix="nb2svc-base-") as tmp:
        context = Path(tmp)
        _assemble_context(context, pip_settings=pip_settings, wheelhouse=wheelhouse, requirements=requirements)
        buildargs = {"BASE_IMAGE": from_image, **proxy_build_args()}
        labels = {"org.opencontainers.image.base.name": from_image, "nb2svc.version": __version__}
        try:
            chunks = docker_client.api.build(
                path=str(context),
                tag=tag,
                decode=True,
                buildargs=buildargs,
                labels=labels,
                network_mode="host",  # the build's pip reaches what the host's pip reaches
                rm=True,
                forcerm=True,
                pull=False,
                nocache=nocache,
            )
            image_id = follow_build_log(chunks, f"building {tag} on {from_image}", progress or (lambda _line: None))
            return image_id or str(docker_client.images.get(tag).id)
        except docker.errors.APIError as exc:
            raise BuildError(f"building {tag} on {from_image} failed: {exc.explanation or exc}") from exc
        except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
            raise DockerUnavailable(str(exc)) from exc


def proxy_build_args() -> dict[str, str]:
    """The host's proxy variables, as Docker's predefined build args (kept out of the image's history)."""
    return {
        variant: os.environ[variant]
        for name in _PROXY_VARIABLES
        for variant in (name, name.lower())
        if os.environ.get(variant)
    }


def _assemble_context(
    context: Path, *, pip_settings: bool, wheelhouse: Path | None, requirements: Sequence[str]
) -> None:
    (context / "Dockerfile").write_bytes(DOCKERFILE.read_bytes())
    (context / "requirements-runtime.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    for folder in ("pip", "wheelhouse"):
        (context / folder).mkdir()
        (context / folder / ".keep").touch()  # COPY needs the folder even when it is empty
    if pip_settings:
        host_pip_settings(context / "pip")
    if wheelhouse is not None:
        for wheel in sorted(wheelhouse.iterdir()):
            if wheel.is_file():
                shutil.copy2(wheel, context / "wheelhouse" / wheel.name)


_LINE_MAX = 300  # a LABEL step holding the OpenAPI document is one very long line


def follow_build_log(chunks: Iterable[Mapping[str, Any]], what: str, progress: Callable[[str], None]) -> str | None:
    """Pass the build's output lines to ``progress``; raise :class:`BuildError` on its error."""
    step = ""
    tail: deque[str] = deque(maxlen=_LOG_TAIL)
    image_id = None
    for chunk in chunks:
        text = chunk.get("stream") or _status_line(chunk)
        for line in (text or "").splitlines():
            line = line.rstrip()
            if not line:
                continue
            progress(line if len(line) <= _LINE_MAX else line[:_LINE_MAX] + " …")
            if line.startswith("Step "):
                step = line
                tail.clear()
            tail.append(line)
        if isinstance(chunk.get("aux"), Mapping) and chunk["aux"].get("ID"):
            image_id = str(chunk["aux"]["ID"])
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail") or {}
            message = chunk.get("error") or detail.get("message") or "unknown error"
            at = f" at {step!r}" if step else ""
            for _ in chunks:  # read the stream to its end, so its connection is released
                pass
            if re.match(r"Step \d+/\d+ : FROM ", step):
                raise ImageUnavailable(
                    f"{what} failed{at}: {str(message).strip()}",
                    tail,
                    "the image is neither here nor pullable: check its name, `docker pull` it, or build it first",
                )
            raise BuildError(f"{what} failed{at}: {str(message).strip()}", tail)
    return image_id


def _status_line(chunk: Mapping[str, Any]) -> str | None:
    """Pull messages worth a line ("Pulling from …", "Digest: …"); per-layer progress is dropped."""
    if "status" in chunk and not chunk.get("progressDetail") and not chunk.get("id"):
        return str(chunk["status"])
    return None


def _host_pip_config(environ: Mapping[str, str]) -> dict[str, str]:
    """The host's effective pip settings for ``pip install`` as ``{key: value}``, from ``pip config list``."""
    try:
        listing = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env=dict(environ),
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}  # no pip here: the container's pip uses its defaults
    return _parse_pip_config_list(listing)


_CONFIG_LINE = re.compile(r"^(?P<section>[^.=]*)\.(?P<key>[^=]+)=(?P<value>.*)$")


def _parse_pip_config_list(listing: str) -> dict[str, str]:
    by_section: dict[str, dict[str, str]] = {}
    for raw in listing.splitlines():
        match = _CONFIG_LINE.match(raw.strip())
        if not match:
            continue
        try:
            value = ast.literal_eval(match["value"])  # pip prints values with repr()
        except (ValueError, SyntaxError):
            value = match["value"]
        key = _PIP_KEY_ALIASES.get(match["key"], match["key"])
        by_section.setdefault(match["section"], {})[key] = str(value)
    merged: dict[str, str] = {}
    for section in _PIP_SECTION_ORDER:
        merged.update(by_section.get(section, {}))
    return merged
