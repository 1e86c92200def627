"""Stage 3: a :class:`ServiceSpec` becomes a build context, a directory you can open and `docker build`.

Dockerfile            from templates/Dockerfile.j2
requirements.txt      the notebook's dependencies (%pip lines, requirements.txt beside it)
build/pip/            the host's pip settings (deps stage only; see image.host_pip_settings)
build/wheelhouse/     wheels for air-gapped installs
runtime/nb2svc/       the nb2svc package (its dependencies are in the base image)
artifacts/            files baked in with --artifact (model weights): their own layer, laid out from /
service/              the notebook, and the backend's own files
stack.yml             (openfaas) for faas-cli
labels.json           the labels `build` stamps on the image
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Literal

import jinja2
import nbformat

from . import __version__
from .backends.kernel_gateway import gateway_command, gateway_notebook
from .cells import Declaration
from .errors import Nb2svcError
from .openapi import openapi_document
from .spec import SYSTEM_PACKAGE_HINT, ServiceSpec, not_a_system_package

Backend = Literal["kernel-gateway", "openfaas"]
BACKENDS: tuple[Backend, ...] = ("kernel-gateway", "openfaas")
DEFAULT_BASE = "nb2svc/base:cpu"
GPU_BASE = "nb2svc/base:cuda"
COMMIT_LABELS = frozenset({"org.opencontainers.image.revision", "nb2svc.git.commit"})
ARTIFACTS_DIR = "/srv/nb2svc/artifacts"
_INLINE_LABEL_MAX = 32_000
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Set by the image itself: a baked-in value would break it.
_RESERVED_ENV = frozenset({"PYTHONPATH", "NB2SVC_NOTEBOOK", "NB2SVC_KIND", "NB2SVC_RUNS_DIR"})


@dataclass(frozen=True)
class Artifact:
    """A file or folder baked into the image (``--artifact SRC[:DEST]``): model weights, vocabularies."""

    source: Path
    dest: str  # absolute path in the image

    @classmethod
    def parse(cls, value: str) -> Artifact:
        """``SRC`` (to /srv/nb2svc/artifacts/NAME) or ``SRC:DEST``."""
        source, sep, dest = value.partition(":")
        path = Path(source).expanduser()
        return cls(path, dest if sep else f"{ARTIFACTS_DIR}/{path.resolve().name}")


@dataclass(frozen=True)
class BuildOptions:
    backend: Backend = "kernel-gateway"
    base: str | None = None  # an image made by `nb2svc base build`; default by `gpu`
    gpu: bool = False
    pip_settings: bool = True  # hand the host's pip.conf and CA bundle to the deps stage
    wheelhouse: Path | None = None
    watchdog_image: str | None = None  # openfaas: an image holding /fwatchdog (of-watchdog)
    kernels: int = 1  # kernel-gateway: prespawned kernels, i.e. concurrent requests
    artifacts: tuple[Artifact, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # baked into the image (ENV), after every dependency layer
    system_packages: tuple[str, ...] = ()  # apt packages, besides the notebook's own (metadata.nb2svc)

    @property
    def base_image(self) -> str:
        return self.base or (GPU_BASE if self.gpu else DEFAULT_BASE)


@dataclass(frozen=True)
class BuildContext:
    path: Path
    spec: ServiceSpec
    options: BuildOptions
    labels: dict[str, str] = field(default_factory=dict)  # all the image's labels (labels.json)
    # those the Dockerfile's LABEL step does not hold: `build` adds them (one build step each)
    build_labels: frozenset[str] = frozenset()

    @property
    def content_hash(self) -> str:
        """Of every file in the context: the same hash, the same image (a rebuild can be skipped)."""
        h = hashlib.sha256()
        for p in sorted(self.path.rglob("*")):
            # labels.json: below; stack.yml: never copied into the image, and it names the image's tag
            if p.is_file() and p.relative_to(self.path).as_posix() not in {"labels.json", "stack.yml"}:
                h.update(str(p.relative_to(self.path)).encode() + b"\0" + p.read_bytes() + b"\0")
        # The labels are part of the image too, but for the commit's value: an unchanged notebook in a
        # later commit is the same image (it keeps the commit it was first built from).
        labels = {k: ("<commit>" if k in COMMIT_LABELS else v) for k, v in self.labels.items()}
        h.update(json.dumps(labels, sort_keys=True).encode())
        return h.hexdigest()


def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("nb2svc.templates"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701  # Dockerfiles and YAML, not HTML
    )


def render(spec: ServiceSpec, out: Path, options: BuildOptions | None = None, image: str = "") -> BuildContext:
    """Write the build context for ``spec`` into ``out`` (emptied first); exactly what `build` sends."""
    options = options or BuildOptions()
    if options.backend not in BACKENDS:
        raise Nb2svcError(f"backend {options.backend!r} is unknown", "use kernel-gateway or openfaas")
    if spec.resources.gpu and not options.gpu:  # metadata.nb2svc.gpu asks for the CUDA base as --gpu does
        options = replace(options, gpu=True)
    _check_env(options.env)
    if out.exists():
        shutil.rmtree(out)
    for d in ("build/pip", "build/wheelhouse", "runtime", "service", "artifacts"):
        (out / d).mkdir(parents=True)
    (out / "build/wheelhouse/.keep").write_text("")
    (out / "build/pip/.keep").write_text("")
    if options.pip_settings:
        from .image import host_pip_settings

        host_pip_settings(out / "build/pip")
    if options.wheelhouse:
        for wheel in options.wheelhouse.glob("*.whl"):
            shutil.copy2(wheel, out / "build/wheelhouse" / wheel.name)
    (out / "requirements.txt").write_text("".join(f"{r}\n" for r in spec.requirements))
    shutil.copytree(
        Path(__file__).parent, out / "runtime/nb2svc", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    baked = _copy_artifacts(options.artifacts, out / "artifacts")
    # The notebook keeps its name: the service's title, OpenAPI and errors name it as the user does.
    notebook_path = f"/srv/nb2svc/{spec.notebook.name}"
    shutil.copy2(spec.notebook, out / "service" / spec.notebook.name)

    packages = system_packages(spec, options)
    labels = image_labels(spec, options)
    if packages:
        labels["nb2svc.system_packages"] = " ".join(packages)
    if baked:
        labels["nb2svc.artifacts"] = json.dumps(baked, separators=(",", ":"))
    # A Dockerfile line holds at most 64 KiB: a long OpenAPI document goes to `build` instead, as do the
    # commit labels (they change with no change to the context).
    build_labels = frozenset(k for k, v in labels.items() if k in COMMIT_LABELS or len(v) > _INLINE_LABEL_MAX)
    env = _templates()
    command, extra_env, watchdog_stage, watchdog_copy = _backend(spec, out, options, notebook_path)
    (out / "Dockerfile").write_text(
        env.get_template("Dockerfile.j2").render(
            version=__version__,
            notebook=spec.notebook.name,
            backend=options.backend,
            base_image=options.base_image,
            kind=spec.kind,
            notebook_path=json.dumps(notebook_path),
            command=json.dumps(command),
            extra_env=extra_env,
            watchdog_stage=watchdog_stage,
            watchdog_copy=watchdog_copy,
            artifacts=[a["path"] for a in baked],
            system_packages=packages,
            env=[(k, dockerfile_quote(v)) for k, v in options.env],
            labels=[(k, dockerfile_quote(labels[k])) for k in sorted(labels) if k not in build_labels],
        )
    )
    if options.backend == "openfaas":
        _openfaas_files(env, spec, out, image or f"{spec.name}:latest")
    (out / "labels.json").write_text(json.dumps(labels, indent=1))
    return BuildContext(out, spec, options, labels, build_labels)


def system_packages(spec: ServiceSpec, options: BuildOptions) -> list[str]:
    """The notebook's system packages, then the build's (``--system-package``); each once, checked."""
    bad = not_a_system_package(options.system_packages)
    if bad is not None:
        raise Nb2svcError(f"--system-package {bad!r} is not a Debian package name", SYSTEM_PACKAGE_HINT)
    return list(dict.fromkeys((*spec.system_packages, *options.system_packages)))


def dockerfile_quote(value: str) -> str:
    """``value`` as one double-quoted Dockerfile word (ENV, LABEL): quotes, backslashes and ``$`` stay data."""
    if "\n" in value or "\r" in value:
        raise Nb2svcError(f"{value[:40]!r}… spans lines", "an image's environment and labels are one line each")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _check_env(env: tuple[tuple[str, str], ...]) -> None:
    for name, _ in env:
        if not _ENV_NAME.fullmatch(name):
            raise Nb2svcError(f"--env {name!r} is not a variable name", "use NAME=VALUE, e.g. MODEL_DIR=/srv/model")
        if name in _RESERVED_ENV:
            raise Nb2svcError(f"--env {name} is set by nb2svc itself", "choose another name")


def _copy_artifacts(artifacts: tuple[Artifact, ...], into: Path) -> list[dict[str, object]]:
    """Lay each artifact out under ``into`` at its destination; their path, size and sha256 for the label."""
    baked: list[dict[str, object]] = []
    for artifact in artifacts:
        if not artifact.source.exists():
            raise Nb2svcError(f"artifact {artifact.source} does not exist", "train first, or fix the path")
        dest = artifact.dest
        if not dest.startswith("/") or ".." in Path(dest).parts or dest.rstrip("/") in {"", "/srv/nb2svc"}:
            raise Nb2svcError(
                f"artifact destination {dest!r} must be an absolute path in the image",
                f"e.g. {artifact.source}:{ARTIFACTS_DIR}/model",
            )
        target = into / dest.strip("/")
        if target.exists():
            raise Nb2svcError(f"two artifacts go to {dest}", "give each its own destination: --artifact SRC:DEST")
        target.parent.mkdir(parents=True, exist_ok=True)
        if artifact.source.is_dir():
            shutil.copytree(artifact.source, target)
            files = sorted(p for p in target.rglob("*") if p.is_file())
        else:
            shutil.copy2(artifact.source, target)
            files = [target]
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(target)).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
        size = sum(f.stat().st_size for f in files)
        baked.append({"path": "/" + dest.strip("/"), "bytes": size, "sha256": h.hexdigest()})
    return baked


def _backend(
    spec: ServiceSpec, out: Path, options: BuildOptions, notebook_path: str
) -> tuple[list[str], str, str, str]:
    """(CMD, extra ENV lines, watchdog stage, watchdog copy) for the Dockerfile."""
    if options.backend == "kernel-gateway":
        nbformat.write(gateway_notebook(spec, notebook_path), out / "service/nb2svc-gateway.ipynb")
        kernels = 1 if spec.kind == "training" else options.kernels  # runs are kept per kernel
        gateway = " ".join(gateway_command("/srv/nb2svc/nb2svc-gateway.ipynb", "${PORT}", kernels))
        return ["sh", "-c", f"exec {gateway}"], "", "", ""
    if options.watchdog_image:
        stage = f"FROM {options.watchdog_image} AS watchdog"
        copy = "COPY --from=watchdog /fwatchdog /usr/bin/fwatchdog"
        env = (
            " \\\n    mode=http upstream_url=http://127.0.0.1:5000 NB2SVC_WATCHDOG=1"
            ' fprocess="python3 -m nb2svc.backends.openfaas"'
        )
        return ["fwatchdog"], env, stage, copy
    return ["python3", "-m", "nb2svc.backends.openfaas"], "", "", ""


def _openfaas_files(env: jinja2.Environment, spec: ServiceSpec, out: Path, image: str) -> None:
    tpl = resources.files("nb2svc.templates") / "openfaas"
    for name in ("template.yml", "handler.py"):
        (out / "service" / name).write_text((tpl / name).read_text())
    timeout = f"{int(spec.resources.timeout or (60 if spec.kind == 'serving' else 3600))}s"
    limits = []
    if spec.resources.memory or spec.resources.cpu:
        limits.append("    limits:")
        if spec.resources.memory:
            limits.append(f"      memory: {spec.resources.memory}")
        if spec.resources.cpu:
            limits.append(f'      cpu: "{spec.resources.cpu}"')
    (out / "stack.yml").write_text(
        env.get_template("openfaas/stack.yml.j2").render(
            version=__version__,
            gateway="http://127.0.0.1:8080",
            name=spec.name.replace("_", "-").lower(),
            image=image,
            timeout=timeout,
            kind=spec.kind,
            sha256=spec.sha256,
            limits="\n".join(limits),
        )
    )


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _declaration(d: Declaration) -> dict[str, object]:
    out: dict[str, object] = {"name": d.name, "type": d.type.python(), "required": d.required}
    if d.has_default and not d.required:
        out["default"] = d.default
    if d.help:
        out["help"] = d.help
    return out


def image_labels(spec: ServiceSpec, options: BuildOptions) -> dict[str, str]:
    r = spec.resources
    labels = {
        "org.opencontainers.image.title": spec.name,
        "org.opencontainers.image.description": f"{spec.kind} function compiled by nb2svc from {spec.notebook.name}",
        "org.opencontainers.image.version": spec.sha256[:12],
        "org.opencontainers.image.base.name": options.base_image,
        "nb2svc.version": __version__,
        "nb2svc.base": "0",  # a function image, not a base (the base's own label would be inherited)
        "nb2svc.kind": spec.kind,
        "nb2svc.backend": options.backend,
        "nb2svc.notebook.sha256": spec.sha256,
        "nb2svc.openapi": json.dumps(openapi_document(spec), separators=(",", ":")),
        "nb2svc.gpu": "true" if options.gpu or spec.resources.gpu else "false",
        # What deploy and `nb2svc models` read without pulling the image (see deploy/labels.py)
        "nb2svc.notebook": spec.notebook.name,
        "nb2svc.resources": _compact(
            {"cpu": r.cpu, "memory": r.memory, "gpu": r.gpu or options.gpu, "timeout": r.timeout}
        ),
        "nb2svc.parameters": _compact([_declaration(p) for p in spec.parameters]),
        "nb2svc.outputs": _compact([_declaration(o) for o in spec.outputs]),
    }
    if spec.card:
        labels["nb2svc.card"] = _compact(dict(spec.card))
    commit = _git_commit(spec.notebook.parent)
    if commit:
        labels["org.opencontainers.image.revision"] = commit
        labels["nb2svc.git.commit"] = commit
    return labels


def _git_commit(where: Path) -> str | None:
    try:
        out = subprocess.run(  # fixed arguments
            ["git", "rev-parse", "HEAD"],  # noqa: S607  # git from PATH, as the user runs it
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
