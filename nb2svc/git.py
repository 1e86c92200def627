"""Running git for publish and the hooks: one function, the hook's GIT_* variables left out."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from .errors import ExternalError, NotebookError

# Set by git for hooks (GIT_DIR=. in a bare repository's post-receive); they would point a git run in
# another worktree back at the repository the hook runs in.
_LOCAL_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_PREFIX", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR")


class GitError(NotebookError):
    """A git command failed on the user's repository (not a git repository, an unknown revision)."""


def git(where: Path, *args: str, check: bool = True) -> str:
    """``git -C where ARGS``'s stdout, stripped; a failure raises :class:`GitError` with git's own message."""
    env = {k: v for k, v in os.environ.items() if k not in _LOCAL_ENV}
    try:
        done = subprocess.run(  # noqa: S603  # fixed program, arguments from nb2svc
            ["git", "-C", str(where), *args],  # noqa: S607  # git from PATH, as the user runs it
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    except FileNotFoundError:
        raise ExternalError("git is not installed", "install git, then run again") from None
    except subprocess.TimeoutExpired:
        raise ExternalError(f"git {' '.join(args)} took over 120 s in {where}") from None
    if check and done.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed in {where}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip() if done.returncode == 0 else ""


def is_commit(where: Path, rev: str) -> bool:
    return bool(git(where, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False))


def current_branch(where: Path) -> str | None:
    """The checked-out branch; None on a detached HEAD."""
    return git(where, "symbolic-ref", "--quiet", "--short", "HEAD", check=False) or None


def docker_tag(name: str) -> str:
    """A branch name as a Docker tag: ``feature/x`` → ``feature-x`` (at most 128 of [A-Za-z0-9_.-])."""
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).lstrip(".-")[:128]
    return tag or "branch"
