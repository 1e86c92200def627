"""Stage 3 without Docker: what `nb2svc render` writes for artifacts, baked env and GPU notebooks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from nb2svc import inspect_notebook
from nb2svc.errors import Nb2svcError, SpecError
from nb2svc.render import Artifact, BuildOptions, render

from .conftest import NOTEBOOKS


def _dockerfile_steps(context: Path) -> list[str]:
    return [line for line in (context / "Dockerfile").read_text().splitlines() if line and not line.startswith("#")]


def test_an_artifact_is_its_own_layer_after_the_dependencies_and_before_the_notebook(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.pt").write_bytes(b"\x00weights")
    (model / "metadata.json").write_text('{"classes": [0, 1]}')
    options = BuildOptions(
        artifacts=(Artifact.parse(str(model)), Artifact.parse(f"{model / 'metadata.json'}:/etc/model.json")),
        env=(("MODEL_DIR", "/srv/nb2svc/artifacts/model"), ("GREETING", 'say "hi" $HOME')),
    )
    ctx = render(inspect_notebook(NOTEBOOKS / "raises.ipynb"), tmp_path / "ctx", options)
    assert (ctx.path / "artifacts/srv/nb2svc/artifacts/model/weights.pt").read_bytes() == b"\x00weights"
    assert (ctx.path / "artifacts/etc/model.json").read_text() == '{"classes": [0, 1]}'
    steps = _dockerfile_steps(ctx.path)
    order = [next(i for i, s in enumerate(steps) if s.startswith(p)) for p in ("COPY --from=deps", "COPY artifacts/")]
    assert order == sorted(order) and steps[order[1] + 1].startswith("COPY service/")
    # ENV values are quoted: quotes and $ stay data (Docker would substitute $HOME)
    assert r'ENV GREETING="say \"hi\" \$HOME"' in steps
    baked = {a["path"]: a for a in json.loads(ctx.labels["nb2svc.artifacts"])}
    assert set(baked) == {"/srv/nb2svc/artifacts/model", "/etc/model.json"}
    assert baked["/srv/nb2svc/artifacts/model"]["bytes"] == len(b"\x00weights") + len('{"classes": [0, 1]}')

    before = ctx.content_hash
    (model / "weights.pt").write_bytes(b"\x00retrained")
    again = render(inspect_notebook(NOTEBOOKS / "raises.ipynb"), tmp_path / "ctx2", options)
    assert again.content_hash != before  # a new model is a new image
    assert json.loads(again.labels["nb2svc.artifacts"])[0]["sha256"] != baked["/srv/nb2svc/artifacts/model"]["sha256"]


def test_no_artifact_no_artifact_layer(tmp_path: Path) -> None:
    ctx = render(inspect_notebook(NOTEBOOKS / "raises.ipynb"), tmp_path / "ctx")
    assert not any(s.startswith("COPY artifacts/") for s in _dockerfile_steps(ctx.path))
    assert "nb2svc.artifacts" not in ctx.labels


@pytest.mark.parametrize(
    ("artifact", "env", "message"),
    [
        ("missing-dir", (), "does not exist"),
        ("model:relative/path", (), "must be an absolute path"),
        ("model:/srv/nb2svc/../etc", (), "must be an absolute path"),
        ("model", (("NB2SVC_NOTEBOOK", "x"),), "set by nb2svc itself"),
        ("model", (("1BAD", "x"),), "not a variable name"),
    ],
)
def test_bad_artifacts_and_env_are_named(
    tmp_path: Path, artifact: str, env: tuple[tuple[str, str], ...], message: str
) -> None:
    (tmp_path / "model").mkdir()
    options = BuildOptions(artifacts=(Artifact.parse(str(tmp_path / artifact)),), env=env)
    with pytest.raises(Nb2svcError, match=message):
        render(inspect_notebook(NOTEBOOKS / "raises.ipynb"), tmp_path / "ctx", options)


def test_a_notebook_asking_for_a_gpu_gets_the_cuda_base(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOKS / "raises.ipynb", as_version=4)
    nb.metadata["nb2svc"] = {"gpu": True}
    path = tmp_path / "gpu.ipynb"
    nbformat.write(nb, path)
    ctx = render(inspect_notebook(path), tmp_path / "ctx")
    assert "ARG BASE_IMAGE=nb2svc/base:cuda" in ctx.path.joinpath("Dockerfile").read_text()
    assert ctx.labels["nb2svc.gpu"] == "true" and ctx.options.gpu
    cpu = render(inspect_notebook(NOTEBOOKS / "raises.ipynb"), tmp_path / "cpu")
    assert "ARG BASE_IMAGE=nb2svc/base:cpu" in cpu.path.joinpath("Dockerfile").read_text()
    # an explicit --base still wins
    mine = render(inspect_notebook(path), tmp_path / "mine", BuildOptions(base="example/cuda-base:1"))
    assert "ARG BASE_IMAGE=example/cuda-base:1" in mine.path.joinpath("Dockerfile").read_text()


def test_render_cli_takes_artifacts_and_env(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"w")
    args = [sys.executable, "-m", "nb2svc.cli", "render", str(NOTEBOOKS / "raises.ipynb"), "-o", str(tmp_path / "c")]
    ok = subprocess.run(
        [*args, "--artifact", str(tmp_path / "w.bin"), "--env", "MODEL=/srv/nb2svc/artifacts/w.bin"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "c/artifacts/srv/nb2svc/artifacts/w.bin").read_bytes() == b"w"
    assert 'ENV MODEL="/srv/nb2svc/artifacts/w.bin"' in (tmp_path / "c/Dockerfile").read_text()
    bad = subprocess.run([*args, "--env", "NOVALUE"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr
    missing = subprocess.run([*args, "--artifact", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_a_label_too_long_for_a_dockerfile_line_is_left_to_build(tmp_path: Path) -> None:
    """Dockerfile lines stop at 64 KiB: a big OpenAPI document is stamped by `build`, not the LABEL step."""
    nb = nbformat.read(NOTEBOOKS / "raises.ipynb", as_version=4)
    nb.cells[1].source = "\n".join(f"p{i}: int = {i}  # {'a long help text ' * 20}" for i in range(250))
    path = tmp_path / "wide.ipynb"
    nbformat.write(nb, path)
    ctx = render(inspect_notebook(path), tmp_path / "ctx")
    assert len(ctx.labels["nb2svc.openapi"]) > 65536
    assert "nb2svc.openapi" in ctx.build_labels and "nb2svc.kind" not in ctx.build_labels
    dockerfile = (ctx.path / "Dockerfile").read_text()
    assert max(len(line) for line in dockerfile.splitlines()) < 65536
    assert "nb2svc.openapi=" not in dockerfile and 'nb2svc.kind="serving"' in dockerfile
    small = render(inspect_notebook(NOTEBOOKS / "raises.ipynb"), tmp_path / "small")
    assert "nb2svc.openapi" not in small.build_labels


def _with_metadata(tmp_path: Path, **nb2svc: object) -> Path:
    nb = nbformat.read(NOTEBOOKS / "raises.ipynb", as_version=4)
    nb.metadata["nb2svc"] = nb2svc
    path = tmp_path / "needs_apt.ipynb"
    nbformat.write(nb, path)
    return path


def test_system_packages_are_a_layer_below_the_python_dependencies(tmp_path: Path) -> None:
    notebook = _with_metadata(tmp_path, system_packages=["libgomp1", "jq=1.6-2.1"])
    spec = inspect_notebook(notebook)
    assert spec.system_packages == ("libgomp1", "jq=1.6-2.1")
    ctx = render(spec, tmp_path / "ctx", BuildOptions(system_packages=("ffmpeg", "jq=1.6-2.1")))
    steps = _dockerfile_steps(ctx.path)
    apt = next(i for i, s in enumerate(steps) if s.startswith("RUN ") and "apt-get update" in s)
    install = next(s for s in steps[apt:] if "apt-get install" in s)
    assert install.split("--no-install-recommends ")[1].split(";")[0] == "libgomp1 jq=1.6-2.1 ffmpeg"
    base, deps = (
        next(i for i, s in enumerate(steps) if s.startswith(p))
        for p in ("FROM ${BASE_IMAGE} AS base", "FROM base AS deps")
    )
    assert base < apt < deps  # in the base stage: both the deps stage and the final image have them
    assert ctx.labels["nb2svc.system_packages"] == "libgomp1 jq=1.6-2.1 ffmpeg"

    plain = render(inspect_notebook(NOTEBOOKS / "raises.ipynb"), tmp_path / "plain")
    assert "apt-get" not in (plain.path / "Dockerfile").read_text()
    assert "nb2svc.system_packages" not in plain.labels


@pytest.mark.parametrize("package", ["jq; rm -rf /", "$(id)", "Jq", "-y", "jq\nRUN id", "jq\n", ""])
def test_a_system_package_that_is_not_a_package_name_is_refused(tmp_path: Path, package: str) -> None:
    with pytest.raises(SpecError, match="is not a Debian package name"):
        inspect_notebook(_with_metadata(tmp_path, system_packages=[package]))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nb2svc.cli",
            "render",
            str(NOTEBOOKS / "raises.ipynb"),
            "-o",
            str(tmp_path / "o"),
            "--system-package",
            package,
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "is not a Debian package name" in r.stderr and "Traceback" not in r.stderr


def test_system_packages_must_be_a_list_of_names(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"metadata.nb2svc.system_packages = 'jq' is not valid"):
        inspect_notebook(_with_metadata(tmp_path, system_packages="jq"))
