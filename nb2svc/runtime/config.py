"""Service settings, read from an injected mapping (the environment in production)."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import Nb2svcError
from ..spec import ServiceSpec


@dataclass(frozen=True)
class Config:
    workers: int = 1  # serving: processes that each hold the notebook's state; 0: this process (no isolation)
    spin: float = 0.0  # NB2SVC_SPIN_US: seconds server and worker poll for each other per request; 0: never
    max_body: int = 10 * 1024 * 1024  # bytes; larger bodies get a 413
    max_output: int = 256 * 1024 * 1024  # bytes of a serving answer's JSON; larger is a 500 output_error
    timeout: float = 60.0  # seconds per request (serving) or per run (training)
    max_runs: int = 1  # training: runs at once; the rest queue
    max_queue: int = 100  # training: queued runs before POST /runs answers 503
    warm_kernels: int = 1  # training: kernels started ahead of runs
    runs_dir: Path = Path(".nb2svc/runs")
    debug: bool = False  # tracebacks in 500 bodies
    instance: str = "localhost"  # X-Nb2svc-Instance: NB2SVC_INSTANCE, else the host name (a container's id)
    # the prediction log (serving): NB2SVC_LOG_URL, sqlite:///PATH (default: beside the runs), postgresql://, off
    log_url: str = "off"
    log_sample: float = 1.0  # NB2SVC_LOG_SAMPLE: share of predictions logged, 0 to 1
    log_buffer: int = 10_000  # NB2SVC_LOG_BUFFER: predictions held while the store is slow or down
    image: str = ""  # what predictions are logged under: NB2SVC_IMAGE (a deploy sets it), else the notebook's sha
    # training on many replicas (docs/scale-out.md)
    queue_url: str = ""  # NB2SVC_QUEUE_URL: redis://… shares runs and queue between replicas; "": embedded
    storage_url: str = ""  # NB2SVC_STORAGE_URL: s3://bucket/prefix for notebooks and artifacts; "": NB2SVC_RUNS_DIR
    s3_cache_bytes: int = 1024 * 1024 * 1024  # NB2SVC_S3_CACHE_BYTES: downloaded run files kept, least recent go
    lease_s: float = 15.0  # NB2SVC_LEASE: a replica silent this long is lost; its runs fail or queue again
    # inputs by reference (Path parameters)
    fetch_max_bytes: int = 1024 * 1024 * 1024  # NB2SVC_FETCH_MAX_BYTES
    fetch_timeout: float = 60.0  # NB2SVC_FETCH_TIMEOUT: seconds for one reference, redirects included
    fetch_allow: tuple[str, ...] = ()  # NB2SVC_FETCH_ALLOW: addresses or networks allowed although private
    allow_file_urls: bool = False  # NB2SVC_ALLOW_FILE_URLS: file:// and plain paths name the server's files

    @classmethod
    def from_env(cls, env: Mapping[str, str], spec: ServiceSpec) -> Config:
        """``NB2SVC_*`` variables over the notebook's ``metadata.nb2svc`` over the defaults."""

        def num(key: str, default: float, cast: type[int] | type[float] = int) -> float:
            raw = env.get(key)
            if raw is None or raw == "":
                return default
            try:
                value = cast(raw)
            except ValueError:
                raise Nb2svcError(f"{key}={raw!r} is not a number") from None
            if value < 0:
                raise Nb2svcError(f"{key}={raw!r} must not be negative")
            return value

        default_timeout = spec.resources.timeout or (60.0 if spec.kind == "serving" else 24 * 3600.0)
        max_runs = int(num("NB2SVC_MAX_RUNS", 1))
        timeout = float(num("NB2SVC_TIMEOUT", default_timeout, float))
        if timeout == 0:
            raise Nb2svcError("NB2SVC_TIMEOUT=0: a timeout must be a positive number of seconds")
        sample = float(num("NB2SVC_LOG_SAMPLE", 1.0, float))
        if sample > 1:
            raise Nb2svcError(f"NB2SVC_LOG_SAMPLE={env['NB2SVC_LOG_SAMPLE']!r} is a share of predictions: 0 to 1")
        return cls(
            workers=int(num("NB2SVC_WORKERS", 1)),
            spin=num("NB2SVC_SPIN_US", cls.spin * 1e6, float) / 1e6,
            max_body=int(num("NB2SVC_MAX_BODY", cls.max_body)),
            max_output=max(1024, int(num("NB2SVC_MAX_OUTPUT", cls.max_output))),
            timeout=timeout,
            max_runs=max(1, max_runs),
            max_queue=int(num("NB2SVC_MAX_QUEUE", cls.max_queue)),
            warm_kernels=int(num("NB2SVC_WARM_KERNELS", max(1, max_runs) + 1)),
            runs_dir=Path(env.get("NB2SVC_RUNS_DIR") or Path(".nb2svc/runs") / spec.name),
            debug=env.get("NB2SVC_DEBUG", "").lower() in {"1", "true", "yes", "on"},
            instance=env.get("NB2SVC_INSTANCE") or socket.gethostname(),
            log_url=_log_url(env, spec),
            log_sample=sample,
            log_buffer=max(1, int(num("NB2SVC_LOG_BUFFER", cls.log_buffer))),
            image=env.get("NB2SVC_IMAGE") or f"sha256:{spec.sha256[:12]}",
            queue_url=_url(env, "NB2SVC_QUEUE_URL", {"redis", "rediss", "unix"}, "redis://HOST:6379/0"),
            storage_url=_url(env, "NB2SVC_STORAGE_URL", {"s3"}, "s3://BUCKET/PREFIX"),
            s3_cache_bytes=int(num("NB2SVC_S3_CACHE_BYTES", cls.s3_cache_bytes)),
            lease_s=max(3.0, float(num("NB2SVC_LEASE", cls.lease_s, float))),
            fetch_max_bytes=int(num("NB2SVC_FETCH_MAX_BYTES", cls.fetch_max_bytes)),
            fetch_timeout=max(0.1, float(num("NB2SVC_FETCH_TIMEOUT", cls.fetch_timeout, float))),
            fetch_allow=tuple(a.strip() for a in env.get("NB2SVC_FETCH_ALLOW", "").split(",") if a.strip()),
            allow_file_urls=env.get("NB2SVC_ALLOW_FILE_URLS", "").lower() in {"1", "true", "yes", "on"},
        )


def _url(env: Mapping[str, str], key: str, schemes: set[str], example: str) -> str:
    url = (env.get(key) or "").strip()
    if url and (url.partition("://")[0].lower() not in schemes or "://" not in url):
        raise Nb2svcError(f"{key}={url!r} is not a URL nb2svc knows", hint=f"use {example}")
    return url


def _log_url(env: Mapping[str, str], spec: ServiceSpec) -> str:
    """NB2SVC_LOG_URL, else a SQLite file beside the runs: ``.nb2svc/predictions/NAME.sqlite`` for `nb2svc serve`,
    ``/var/lib/nb2svc/predictions.sqlite`` in an image (whose NB2SVC_RUNS_DIR is /var/lib/nb2svc/runs)."""
    url = (env.get("NB2SVC_LOG_URL") or "").strip()
    if url:
        if url.lower() in {"off", "none", "0", "false"}:
            return "off"
        if url.partition("://")[0].lower() not in {"sqlite", "postgresql", "postgres"} or "://" not in url:
            raise Nb2svcError(
                f"NB2SVC_LOG_URL={url!r} is not a prediction log nb2svc knows",
                hint="use sqlite:///PATH, postgresql://USER@HOST/DB, or off",
            )
        return url
    runs = env.get("NB2SVC_RUNS_DIR")
    path = Path(runs).parent / "predictions.sqlite" if runs else Path(".nb2svc/predictions") / f"{spec.name}.sqlite"
    return f"sqlite:///{path.absolute()}"
