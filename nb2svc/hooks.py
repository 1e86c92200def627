"""Git hooks that publish: ``pre-push`` in a working clone, ``post-receive`` in a bare (server) repository.

The scripts are rendered from ``templates/hooks/`` and call ``nb2svc.cli`` with the Python that installed
them, so they work without nb2svc on the hook's PATH. An existing hook is kept unless ``force`` (then it is
saved beside, as ``<hook>.nb2svc-backup``, and put back by :func:`uninstall`).
"""

from __future__ import annotations

import shlex
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import Nb2svcError
from .git import GitError, git
from .render import _templates

MARKER = "installed by nb2svc hook install"
DEFAULT_TIMEOUT = 600  # seconds; NB2SVC_HOOK_TIMEOUT overrides when the hook runs
BACKUP_SUFFIX = ".nb2svc-backup"


class HookError(Nb2svcError):
    """The hook cannot be installed or removed here (wrong kind of repository, a hook already there)."""


@dataclass(frozen=True)
class HookChange:
    path: Path
    backup: Path | None = None  # where the hook it replaced, or that was restored, lives


def hook_name(server: bool) -> str:
    return "post-receive" if server else "pre-push"


def hook_path(repo: str | Path, server: bool = False) -> Path:
    """Where git looks for the hook (core.hooksPath respected), after checking the repository's kind."""
    repo = Path(repo)
    try:
        bare = git(repo, "rev-parse", "--is-bare-repository") == "true"
        hooks = Path(git(repo, "rev-parse", "--git-path", "hooks"))
    except GitError:
        raise HookError(f"{repo} is not a git repository", "pass --repo with a clone (or a bare repository)") from None
    if server and not bare:
        raise HookError(
            f"{repo} is a working clone; the server hook goes in a bare repository",
            "use `nb2svc hook install` (no --server) here, or --repo the bare repository",
        )
    if not server and bare:
        raise HookError(
            f"{repo} is a bare repository; the pre-push hook goes in a working clone",
            "use `nb2svc hook install --server` for the server side",
        )
    # --git-path answers relative to the repository (.git/hooks, or hooks when bare) unless core.hooksPath is set
    return (repo / hooks).resolve() / hook_name(server)


def hook_script(server: bool = False, timeout: int = DEFAULT_TIMEOUT) -> str:
    return (
        _templates()
        .get_template(f"hooks/{hook_name(server)}.j2")
        .render(marker=MARKER, version=__version__, python=shlex.quote(sys.executable), timeout=timeout)
    )


def install(repo: str | Path, server: bool = False, force: bool = False) -> HookChange:
    path = hook_path(repo, server)
    backup = None
    if path.exists() or path.is_symlink():
        if _ours(path):
            pass  # reinstalling our own hook (a newer nb2svc, another Python): no backup needed
        elif not force:
            raise HookError(
                f"{path} already exists and is not nb2svc's",
                f"merge it by hand, or use --force to replace it (it is kept as {path.name}{BACKUP_SUFFIX})",
            )
        else:
            backup = path.with_name(path.name + BACKUP_SUFFIX)
            path.replace(backup)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(hook_script(server))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return HookChange(path, backup)


def uninstall(repo: str | Path, server: bool = False) -> HookChange:
    """Remove nb2svc's hook and put back the one it replaced, if any."""
    path = hook_path(repo, server)
    if not path.exists():
        raise HookError(f"no {path.name} hook in {path.parent}", "nothing to uninstall")
    if not _ours(path):
        raise HookError(f"{path} was not installed by nb2svc; left as it is")
    path.unlink()
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if backup.exists():
        backup.replace(path)
        return HookChange(path, path)
    return HookChange(path)


def _ours(path: Path) -> bool:
    try:
        return MARKER in path.read_text(errors="replace")[:500]
    except OSError:
        return False
