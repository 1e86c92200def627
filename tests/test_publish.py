"""Publishing from git, for real: git repositories, a bare server, `git push` over the file transport with
nb2svc's hooks, Docker and the registry on 127.0.0.1:5000 (a fresh namespace per test)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from nb2svc.hooks import BACKUP_SUFFIX, HookError, install, uninstall
from nb2svc.project import ProjectError, load_project, parse_project
from nb2svc.publish import plan, publish

from .conftest import BASE, NOTEBOOKS, ROOT

REGISTRY = "127.0.0.1:5000"
IRIS = ROOT / "sample_notebooks" / "iris_nearest.ipynb"
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]


def git(where: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    done = subprocess.run(
        [*GIT, "-C", str(where), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        check=False,
    )
    out = done.stdout + done.stderr
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} exited {done.returncode}:\n{out}")
    return out


def commit(repo: Path, message: str, *paths: str) -> None:
    git(repo, "add", "-A", *paths)
    git(repo, "commit", "-q", "-m", message)


def push(repo: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GIT, "-C", str(repo), "push", "origin", "main"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
        check=False,
    )


def tags(namespace: str, name: str) -> list[str]:
    r = httpx.get(f"http://{REGISTRY}/v2/{namespace}/{name}/tags/list", timeout=10)
    return [] if r.status_code == 404 else sorted(r.json().get("tags") or [])


def edit(notebook: Path, line: str) -> None:
    """Add a line to the notebook's last code cell: its code changes, its API does not."""
    nb = json.loads(notebook.read_text())
    cell = [c for c in nb["cells"] if c["cell_type"] == "code"][-1]
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    cell["source"] = source + "\n" + line
    notebook.write_text(json.dumps(nb, indent=1))


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def repos(tmp_path: Path, namespace: str) -> tuple[Path, Path]:
    """(a bare server repository with the post-receive hook, a clone of it with the pre-push hook)."""
    bare, work = tmp_path / "server.git", tmp_path / "work"
    subprocess.run([*GIT, "init", "-q", "--bare", str(bare)], check=True)
    subprocess.run([*GIT, "init", "-q", str(work)], check=True)
    git(work, "remote", "add", "origin", str(bare))
    (work / "notebooks").mkdir()
    shutil.copy(IRIS, work / "notebooks" / "iris_nearest.ipynb")
    shutil.copy(NOTEBOOKS / "raises.ipynb", work / "notebooks" / "raises.ipynb")
    (work / "nb2svc.yaml").write_text(
        f"registry: {REGISTRY}/{namespace}\nbase: {BASE}\nnotebooks:\n  - path: notebooks/*.ipynb\n"
    )
    commit(work, "two notebooks")
    install(work)
    install(bare, server=True)
    return bare, work


@pytest.fixture(scope="module")
def docker_base(client: Any) -> None:
    """The test base image exists (conftest's ``client`` builds it)."""


# --- with Docker and the registry ---------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_pushes_publish_what_changed_and_report_removals(
    docker_base: None, repos: tuple[Path, Path], namespace: str
) -> None:
    bare, work = repos
    first = push(work)
    assert first.returncode == 0, first.stderr
    sha1 = git(work, "rev-parse", "--short", "HEAD").strip()
    assert "built       notebooks/iris_nearest.ipynb" in first.stderr
    assert "built       notebooks/raises.ipynb" in first.stderr
    for name in ("iris_nearest", "raises"):
        found = tags(namespace, name)
        assert sha1 in found and "main" in found and any(t.startswith("ctx-") for t in found)
    # the server publishes the same commit: its images are there, so it only re-tags, and says so to the client
    assert "remote: nb2svc publish to" in first.stderr
    assert "remote:   unchanged   notebooks/iris_nearest.ipynb" in first.stderr

    edit(work / "notebooks" / "iris_nearest.ipynb", "# a comment: new code, same API")
    commit(work, "edit iris")
    second = push(work)
    assert second.returncode == 0, second.stderr
    sha2 = git(work, "rev-parse", "--short", "HEAD").strip()
    assert "built       notebooks/iris_nearest.ipynb" in second.stderr
    full1 = git(work, "rev-parse", "HEAD~1").strip()
    assert f"skipped     notebooks/raises.ipynb        not changed since {full1}" in second.stderr
    assert sha2 in tags(namespace, "iris_nearest")
    assert sha2 not in tags(namespace, "raises")
    assert len([t for t in tags(namespace, "iris_nearest") if t.startswith("ctx-")]) == 2

    (work / "notebooks" / "raises.ipynb").unlink()
    commit(work, "remove raises")
    third = push(work)
    assert third.returncode == 0, third.stderr
    assert "removed     notebooks/raises.ipynb" in third.stderr
    assert "remote:   removed     notebooks/raises.ipynb" in third.stderr
    assert git(bare, "log", "--oneline").count("\n") == 3


@pytest.mark.docker
@pytest.mark.slow
def test_a_notebook_that_does_not_compile_stops_the_push_and_the_server_keeps_a_skipped_one(
    docker_base: None, repos: tuple[Path, Path], namespace: str
) -> None:
    bare, work = repos
    shutil.copy(NOTEBOOKS / "syntax_error.ipynb", work / "notebooks" / "broken.ipynb")
    commit(work, "a broken notebook")
    stopped = push(work)
    assert stopped.returncode != 0
    assert "failed      notebooks/broken.ipynb" in stopped.stderr
    assert "the push was stopped because publishing failed" in stopped.stderr
    assert "NB2SVC_SKIP_HOOK=1 git push" in stopped.stderr
    assert tags(namespace, "broken") == []
    assert "built       notebooks/iris_nearest.ipynb" in stopped.stderr  # one failure does not stop the others
    assert git(bare, "rev-parse", "--verify", "-q", "refs/heads/main", check=False) == ""  # nothing reached it

    forced = push(work, NB2SVC_SKIP_HOOK="1")
    assert forced.returncode == 0, forced.stderr
    assert "NB2SVC_SKIP_HOOK=1: not publishing this push" in forced.stderr
    assert "remote:   failed      notebooks/broken.ipynb" in forced.stderr
    # the stopped push had published the notebooks that compile: the server finds their images
    assert "remote:   unchanged   notebooks/iris_nearest.ipynb" in forced.stderr
    assert "remote: nb2svc: publishing failed (exit 1); the push itself is kept" in forced.stderr
    assert "a broken notebook" in git(bare, "log", "--oneline")
    assert tags(namespace, "broken") == []
    assert tags(namespace, "iris_nearest")


@pytest.mark.docker
@pytest.mark.slow
def test_a_publish_over_the_hooks_time_limit_is_stopped_and_so_is_the_push(
    docker_base: None, repos: tuple[Path, Path]
) -> None:
    bare, work = repos
    started = time.monotonic()
    stopped = push(work, NB2SVC_HOOK_TIMEOUT="1")  # compiling and building two notebooks takes longer
    assert time.monotonic() - started < 60
    assert stopped.returncode != 0
    assert "nb2svc: publishing took over 1 s and was stopped (NB2SVC_HOOK_TIMEOUT sets the limit)" in stopped.stderr
    assert "the push was stopped because publishing failed" in stopped.stderr
    assert git(bare, "rev-parse", "--verify", "-q", "refs/heads/main", check=False) == ""  # nothing reached it
    assert "nb2svc-push." not in git(work, "worktree", "list")  # the pushed commit's checkout is gone


# --- without Docker ----------------------------------------------------------------------------------------


def test_a_one_line_config_is_enough(tmp_path: Path) -> None:
    (tmp_path / "nb2svc.yaml").write_text("registry: 127.0.0.1:5000/team\n")
    project = load_project(tmp_path)
    assert (project.registry_host, project.namespace, project.backend) == ("127.0.0.1:5000", "team", "kernel-gateway")
    assert [e.path for e in project.notebooks] == ["**/*.ipynb"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("registry: 127.0.0.1:5000/t\nbackend: flask\n", "(line 2): key 'backend' 'flask' is unknown"),
        ("registry: 127.0.0.1:5000/t\nregsitry: x\n", "(line 2): key 'regsitry' is not a key nb2svc knows"),
        ("base: x\n", "key 'registry' is required"),
        ("registry: 127.0.0.1:5000/Team\n", "(line 1): key 'registry' '127.0.0.1:5000/Team' is not"),
        ("registry: r:5000/t\nnotebooks:\n  - path: a/*.ipynb\n  - kind: batch\n", "(line 4): key 'notebooks[1]'"),
        ("registry: r:5000/t\nnotebooks:\n  - path: a.ipynb\n    kind: batch\n", "(line 4): key 'notebooks[0].kind'"),
        ("registry: r:5000/t\nnotebooks: all\n", "(line 2): key 'notebooks' must be a non-empty list"),
        ("registry: [r\n", "(line 2, column 1): not valid YAML"),
        ("registry: 5000\n", "(line 1): key 'registry' must be a non-empty string"),
    ],
)
def test_config_errors_name_the_key_and_the_line(text: str, message: str) -> None:
    with pytest.raises(ProjectError) as e:
        parse_project(text, Path("."))
    assert message in str(e.value)
    assert e.value.exit_code == 1


def _repo(tmp_path: Path, config: str = "registry: 127.0.0.1:1/team\n") -> Path:
    repo = tmp_path / "repo"
    (repo / "a" / ".ipynb_checkpoints").mkdir(parents=True)
    (repo / "b").mkdir()
    shutil.copy(IRIS, repo / "a" / "iris_nearest.ipynb")
    shutil.copy(IRIS, repo / "a" / ".ipynb_checkpoints" / "iris_nearest-checkpoint.ipynb")
    shutil.copy(NOTEBOOKS / "raises.ipynb", repo / "b" / "raises.ipynb")
    (repo / "nb2svc.yaml").write_text(config)
    subprocess.run([*GIT, "init", "-q", str(repo)], check=True)
    commit(repo, "one")
    shutil.copy(NOTEBOOKS / "raises.ipynb", repo / "untracked.ipynb")  # not committed: not published
    return repo


def test_plan_matches_tracked_notebooks_and_narrows_by_since(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    assert [(i.notebook, i.image, i.state) for i in plan(repo)] == [
        ("a/iris_nearest.ipynb", "127.0.0.1:1/team/iris_nearest", "candidate"),
        ("b/raises.ipynb", "127.0.0.1:1/team/raises", "candidate"),
    ]
    (repo / "b" / "requirements.txt").write_text("six\n")  # beside raises: raises changed
    (repo / "a" / "iris_nearest.ipynb").unlink()
    commit(repo, "two", "a", "b")
    assert [(i.notebook, i.state) for i in plan(repo, "HEAD~1")] == [
        ("a/iris_nearest.ipynb", "removed"),
        ("b/raises.ipynb", "candidate"),
    ]
    (repo / "c.txt").write_text("x")
    commit(repo, "three", "c.txt")
    assert [i.state for i in plan(repo, "HEAD~1")] == ["not-changed"]


def test_failures_are_per_notebook_with_the_cli_exit_code(tmp_path: Path) -> None:
    repo = _repo(tmp_path)  # the registry at 127.0.0.1:1 does not answer: Docker/registry failures, exit 3
    shutil.copy(NOTEBOOKS / "syntax_error.ipynb", repo / "b" / "broken.ipynb")
    commit(repo, "broken", "b")
    report = publish(repo, dry_run=True)
    by = {o.notebook: o for o in report.outcomes}
    assert by["b/broken.ipynb"].status == "failed" and by["b/broken.ipynb"].exit_code == 1
    assert by["a/iris_nearest.ipynb"].exit_code == 3 and "registry 127.0.0.1:1" in by["a/iris_nearest.ipynb"].detail
    assert report.exit_code == 3

    (repo / "a" / "iris_nearest.ipynb").unlink()
    (repo / "b" / "raises.ipynb").unlink()
    commit(repo, "only the broken one", "a", "b")
    cli = subprocess.run(
        [sys.executable, "-m", "nb2svc.cli", "publish", "--repo", str(repo), "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "failed      b/broken.ipynb" in cli.stdout

    (repo / "nb2svc.yaml").write_text("registry: 127.0.0.1:1/team\nnotebooks:\n  - path: '*.ipynb'\n    kind: x\n")
    cli = subprocess.run(
        [sys.executable, "-m", "nb2svc.cli", "publish", "--repo", str(repo)], capture_output=True, text=True
    )
    assert cli.returncode == 1
    assert "Error: nb2svc.yaml (line 4): key 'notebooks[0].kind' 'x' is unknown" in cli.stderr


def test_hooks_install_refuse_to_overwrite_and_uninstall(tmp_path: Path) -> None:
    repo, bare = tmp_path / "work", tmp_path / "server.git"
    subprocess.run([*GIT, "init", "-q", str(repo)], check=True)
    subprocess.run([*GIT, "init", "-q", "--bare", str(bare)], check=True)
    theirs = repo / ".git" / "hooks" / "pre-push"
    theirs.write_text("#!/bin/sh\necho theirs\n")
    with pytest.raises(HookError, match="already exists and is not nb2svc's"):
        install(repo)
    assert theirs.read_text() == "#!/bin/sh\necho theirs\n"
    change = install(repo, force=True)
    assert change.backup == theirs.with_name("pre-push" + BACKUP_SUFFIX)
    script = theirs.read_text()
    assert f"{sys.executable}" in script and "NB2SVC_SKIP_HOOK" in script and os.access(theirs, os.X_OK)
    install(repo)  # ours: reinstalling needs no --force
    uninstall(repo)
    assert theirs.read_text() == "#!/bin/sh\necho theirs\n"  # the replaced hook is back
    with pytest.raises(HookError, match="not installed by nb2svc"):
        uninstall(repo)

    with pytest.raises(HookError, match="goes in a bare repository"):
        install(repo, server=True)
    with pytest.raises(HookError, match="goes in a working clone"):
        install(bare)
    server_hook = install(bare, server=True).path
    assert server_hook == (bare / "hooks" / "post-receive").resolve()
    cli = subprocess.run(
        [sys.executable, "-m", "nb2svc.cli", "hook", "uninstall", "--server", "--repo", str(bare)],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr
    assert not server_hook.exists()


# --- a registry that asks for a login (conftest's locked_registry) --------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_publishing_to_a_registry_that_asks_for_docker_login_credentials(
    docker_base: None, locked_registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logged out: the registry's refusal, and what to do. Logged in (docker's config.json): built, pushed,
    and at the next commit re-tagged through the registry API with the same login."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([*GIT, "init", "-q", str(repo)], check=True)
    shutil.copy(NOTEBOOKS / "raises.ipynb", repo / "raises.ipynb")
    (repo / "nb2svc.yaml").write_text(f"registry: {locked_registry}/team\nbase: {BASE}\n")
    commit(repo, "a notebook")

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "logged-out"))
    report = publish(repo, client=docker.from_env())
    [failed] = report.outcomes
    assert failed.status == "failed" and failed.exit_code == 3
    assert f"registry {locked_registry} refused" in failed.detail
    assert f"docker login {locked_registry}" in failed.detail

    config = tmp_path / "logged-in"
    config.mkdir()
    login = base64.b64encode(b"robot:s3cret").decode()
    (config / "config.json").write_text(json.dumps({"auths": {locked_registry: {"auth": login}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    client = docker.from_env()  # reads the login, as the CLI's client does
    [built] = publish(repo, client=client).outcomes
    assert built.status == "built", built.detail
    (repo / "README.md").write_text("not a notebook\n")
    commit(repo, "docs only")
    [unchanged] = publish(repo, client=client).outcomes
    assert unchanged.status == "unchanged", unchanged.detail
    listed = httpx.get(f"http://{locked_registry}/v2/team/raises/tags/list", auth=("robot", "s3cret"), timeout=10)
    head = git(repo, "rev-parse", "--short", "HEAD").strip()
    assert head in listed.json()["tags"]  # the re-tag reached the registry under the new commit
    assert httpx.get(f"http://{locked_registry}/v2/team/raises/tags/list", timeout=10).status_code == 401
