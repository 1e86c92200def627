"""Publishing from git: build and push the project's notebooks whose image the registry does not have yet.

Each notebook becomes ``{registry}/{file stem}`` tagged with the commit's short SHA, the branch name, and
``ctx-<first 16 hex of the build context's content hash>``. The ``ctx-`` tag is how "changed" is decided: a
context whose tag the registry already has is not rebuilt; its manifest is only copied under the commit's and
the branch's tags (Registry API, no pull or push). The ``ctx-`` tag is pushed last, so a publish cut short never
leaves a ``ctx-`` tag whose commit and branch tags are missing.

``--since REV`` narrows the candidates to notebooks whose file, a ``requirements.txt`` beside it, or
``nb2svc.yaml`` changed between REV and HEAD; notebooks deleted since REV are reported as removed (their images
stay in the registry). Each notebook is built on its own: one failure does not stop the others.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from .build import build, push
from .errors import Nb2svcError
from .git import current_branch, docker_tag, git, is_commit
from .image import connect
from .notebook import load_notebook
from .project import CONFIG_FILE, NotebookEntry, Project, ProjectError, load_project
from .registry import Registry
from .render import BuildOptions, render
from .spec import build_spec

Progress = Callable[[str], None]
Status = Literal["built", "unchanged", "would-build", "skipped", "removed", "failed"]
State = Literal["candidate", "not-changed", "removed"]


def _quiet(_line: str) -> None:
    pass


@dataclass(frozen=True)
class Item:
    """A notebook the project's config matches, and what ``--since`` says about it."""

    notebook: str  # path relative to the repository's root, with /
    image: str  # {registry}/{stem}, no tag
    entry: NotebookEntry
    state: State = "candidate"


@dataclass(frozen=True)
class Outcome:
    notebook: str
    status: Status
    ref: str = ""  # the image with the commit's tag
    digest: str = ""  # sha256:… of the manifest in the registry
    detail: str = ""
    exit_code: int = 0  # of a failure: 1 the notebook or config, 3 Docker or the registry


@dataclass(frozen=True)
class Report:
    registry: str
    commit: str
    branch: str | None
    since: str | None
    outcomes: tuple[Outcome, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def exit_code(self) -> int:
        """0 when nothing failed; 3 when Docker or the registry failed; else 1."""
        return max((o.exit_code for o in self.outcomes if o.status == "failed"), default=0)

    def count(self, status: Status) -> int:
        return sum(o.status == status for o in self.outcomes)

    def lines(self) -> list[str]:
        at = f"{self.commit}" + (f" ({self.branch})" if self.branch else "")
        head = f"nb2svc publish to {self.registry} at {at}" + (f", since {self.since}" if self.since else "")
        out = [head, *(f"  note: {n}" for n in self.notes)]
        width = max((len(o.notebook) for o in self.outcomes), default=0)
        for o in self.outcomes:
            text = "  ".join(s for s in (o.ref, o.digest, o.detail) if s)
            first, *rest = text.splitlines() or [""]
            out.append(f"  {o.status:<11} {o.notebook:<{width}}  {first}".rstrip())
            out.extend(f"      {line}" for line in rest)
        order: tuple[Status, ...] = ("built", "unchanged", "would-build", "skipped", "removed", "failed")
        summary = ", ".join(f"{self.count(s)} {s}" for s in order if self.count(s))
        out.append(summary or "no notebooks matched nb2svc.yaml")
        return out


def plan(repo_root: str | Path, since: str | None = None) -> list[Item]:
    """The notebooks ``nb2svc.yaml`` matches (tracked by git), and those deleted since ``since``."""
    root = Path(repo_root).resolve()
    items, _notes = _plan(load_project(root), since)
    return items


def publish(
    repo_root: str | Path,
    since: str | None = None,
    dry_run: bool = False,
    client: Any = None,
    progress: Progress = _quiet,
    branch: str | None = None,
) -> Report:
    """Build and push what changed; ``branch`` names the branch on a detached HEAD (the hooks' worktrees)."""
    root = Path(repo_root).resolve()
    project = load_project(root)
    items, notes = _plan(project, since)
    commit = git(root, "rev-parse", "--short", "HEAD")
    branch = branch or current_branch(root)
    tags = (commit, *((docker_tag(branch),) if branch else ()))
    registry = Registry(project.registry_host)
    docker: list[Any] = [client]

    def docker_client() -> Any:
        if docker[0] is None:
            docker[0] = connect()
        return docker[0]

    outcomes: list[Outcome] = []
    for item in items:
        if item.state == "removed":
            outcomes.append(Outcome(item.notebook, "removed", detail=f"deleted since {since}; images kept"))
            continue
        if item.state == "not-changed":
            outcomes.append(Outcome(item.notebook, "skipped", detail=f"not changed since {since}"))
            continue
        progress(f"{item.notebook}: compiling")
        try:
            outcome = _publish_one(root, project, item, tags, registry, dry_run, docker_client, progress)
        except Nb2svcError as e:
            outcome = Outcome(item.notebook, "failed", detail=str(e), exit_code=e.exit_code)
        except Exception as e:  # one notebook's surprise must not cost the others their images
            outcome = Outcome(item.notebook, "failed", detail=f"unexpected {type(e).__name__}: {e}", exit_code=1)
        progress(f"{item.notebook}: {outcome.status}")
        outcomes.append(outcome)
    return Report(project.registry, commit, branch, since, tuple(outcomes), tuple(notes))


def _publish_one(
    root: Path,
    project: Project,
    item: Item,
    tags: tuple[str, ...],
    registry: Registry,
    dry_run: bool,
    docker_client: Callable[[], Any],
    progress: Progress,
) -> Outcome:
    nb = load_notebook(root / item.notebook)
    spec = build_spec(nb, nb.metadata.get("kind") or item.entry.kind)  # the notebook's own kind wins
    options = BuildOptions(backend=item.entry.backend or project.backend, base=project.base)
    ref = f"{item.image}:{tags[0]}"
    name = item.image.partition("/")[2]
    with tempfile.TemporaryDirectory(prefix="nb2svc-publish-") as tmp:
        # stack.yml names the image untagged: a tag per commit would change the content hash every commit
        context = render(spec, Path(tmp) / "context", options, item.image)
        ctx_tag = f"ctx-{context.content_hash[:16]}"
        if registry.digest(name, ctx_tag):
            if dry_run:
                return Outcome(item.notebook, "unchanged", ref, detail=f"{ctx_tag} is in the registry")
            digest = registry.retag(name, ctx_tag, tags)
            return Outcome(item.notebook, "unchanged", ref, digest, f"{ctx_tag} was in the registry: re-tagged")
        if dry_run:
            return Outcome(item.notebook, "would-build", ref, detail=f"{ctx_tag} is not in the registry")
        client = docker_client()
        image = build(context, ref, client=client, progress=progress)
    built = client.images.get(image.id)
    digest = ""
    for tag in (*tags, ctx_tag):  # ctx- last: its presence means the others are there
        built.tag(item.image, tag=tag)
        digest = push(f"{item.image}:{tag}", client=client, progress=progress).partition("@")[2]
    return Outcome(item.notebook, "built", ref, digest, "(re-tagged a local image)" if image.cached else "")


def _plan(project: Project, since: str | None) -> tuple[list[Item], list[str]]:
    root = project.root
    tracked = git(root, "ls-files", "-z").split("\0")
    notes: list[str] = []
    changed: set[str] | None = None
    deleted: list[str] = []
    if since:
        if is_commit(root, since):
            changed = set(git(root, "diff", "--name-only", "--no-renames", since, "HEAD").splitlines())
            deleted = git(root, "diff", "--name-only", "--no-renames", "--diff-filter=D", since, "HEAD").splitlines()
        else:
            notes.append(f"{since} is not a commit here: every notebook is a candidate")
    items = [_item(project, path, entry) for path, entry in _matches(project, tracked)]
    seen: dict[str, str] = {}
    for item in items:
        if item.image in seen:
            raise ProjectError(
                f"{item.notebook} and {seen[item.image]} would both be published as {item.image}",
                "rename one, or narrow the notebooks' paths in nb2svc.yaml",
            )
        seen[item.image] = item.notebook
    if changed is not None:
        config_changed = CONFIG_FILE in changed
        items = [
            item if config_changed or _touched(item.notebook, changed) else _with(item, "not-changed") for item in items
        ]
        items += [_with(_item(project, path, entry), "removed") for path, entry in _matches(project, deleted)]
    return sorted(items, key=lambda i: i.notebook), notes


def _matches(project: Project, paths: list[str]) -> list[tuple[str, NotebookEntry]]:
    """(path, the first entry whose glob matches it) for each notebook path."""
    out = []
    for path in paths:
        parts = PurePosixPath(path).parts
        if not path.endswith(".ipynb") or ".ipynb_checkpoints" in parts:
            continue
        entry = next((e for e in project.notebooks if _glob_regex(e.path).fullmatch(path)), None)
        if entry:
            out.append((path, entry))
    return out


def _touched(notebook: str, changed: set[str]) -> bool:
    beside = PurePosixPath(notebook).parent / "requirements.txt"
    return notebook in changed or beside.as_posix() in changed


def _item(project: Project, path: str, entry: NotebookEntry) -> Item:
    stem = re.sub(r"[^a-z0-9._-]+", "-", PurePosixPath(path).stem.lower()).strip("._-") or "notebook"
    return Item(path, f"{project.registry}/{stem}", entry)


def _with(item: Item, state: State) -> Item:
    return Item(item.notebook, item.image, item.entry, state)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob as git users write it: ``*`` within a folder, ``**/`` any folders (none included)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))
