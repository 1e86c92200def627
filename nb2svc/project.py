"""``nb2svc.yaml``, the project file at a repository's root: where images go and which notebooks are services.

```yaml
registry: 127.0.0.1:5000/team        # required
base: nb2svc/base:cpu                # optional: the base image for every notebook
backend: kernel-gateway              # optional: the default backend (kernel-gateway or openfaas)
notebooks:                           # optional: default one entry, path "**/*.ipynb"
  - path: notebooks/*.ipynb          # a glob, relative to the root
    kind: serving                    # optional; a notebook's own metadata.nb2svc.kind wins
    backend: openfaas                # optional; overrides the default backend
```

Errors name the key and its line, from PyYAML's node marks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import NotebookError
from .render import BACKENDS, Backend
from .spec import KINDS, Kind

CONFIG_FILE = "nb2svc.yaml"
DEFAULT_GLOB = "**/*.ipynb"
_TOP_KEYS = ("registry", "base", "backend", "notebooks", "monitor")  # monitor: read by nb2svc.monitor.config
_ENTRY_KEYS = ("path", "kind", "backend")
# host[:port] then lowercase path components, as Docker's reference grammar allows
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")


class ProjectError(NotebookError):
    """``nb2svc.yaml`` is missing or wrong: the message names the key and its line."""


@dataclass(frozen=True)
class NotebookEntry:
    path: str  # a glob relative to the project's root
    kind: Kind | None = None
    backend: Backend | None = None
    line: int = 0  # where the entry starts in nb2svc.yaml (1-based; 0 for the default entry)


@dataclass(frozen=True)
class Project:
    root: Path
    registry: str  # host[:port][/namespace]
    base: str | None = None
    backend: Backend = "kernel-gateway"
    notebooks: tuple[NotebookEntry, ...] = (NotebookEntry(DEFAULT_GLOB),)

    @property
    def registry_host(self) -> str:
        return self.registry.partition("/")[0]

    @property
    def namespace(self) -> str:
        return self.registry.partition("/")[2]


def load_project(root: str | Path) -> Project:
    """Read and validate ``root/nb2svc.yaml``."""
    root = Path(root)
    path = root / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProjectError(
            f"no {CONFIG_FILE} in {root}", "write one with at least a line like `registry: 127.0.0.1:5000/team`"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProjectError(f"cannot read {path}: {e}") from None
    return parse_project(text, root)


def parse_project(text: str, root: Path) -> Project:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ProjectError(f"{CONFIG_FILE}{where}: not valid YAML: {problem}") from None
    if node is None:
        raise ProjectError(f"{CONFIG_FILE} is empty", "it needs at least `registry: HOST[:PORT]/NAMESPACE`")
    top = _mapping(node, "the file", _TOP_KEYS)
    if "registry" not in top:
        raise ProjectError(
            f"{CONFIG_FILE} (line 1): key 'registry' is required", "e.g. `registry: 127.0.0.1:5000/team`"
        )
    registry = _string(top["registry"], "registry").rstrip("/")
    if not _REGISTRY.fullmatch(registry):
        raise _error(top["registry"], "registry", f"{registry!r} is not HOST[:PORT][/namespace] in lowercase")
    base = _string(top["base"], "base") if "base" in top else None
    backend = _backend(top["backend"], "backend") if "backend" in top else "kernel-gateway"
    entries: tuple[NotebookEntry, ...] = (NotebookEntry(DEFAULT_GLOB),)
    if "notebooks" in top:
        seq = top["notebooks"]
        if not isinstance(seq, yaml.SequenceNode) or not seq.value:
            raise _error(seq, "notebooks", "must be a non-empty list of entries like `- path: notebooks/*.ipynb`")
        entries = tuple(_entry(item, i) for i, item in enumerate(seq.value))
    return Project(root, registry, base, backend, entries)


def _entry(node: yaml.Node, index: int) -> NotebookEntry:
    key = f"notebooks[{index}]"
    fields = _mapping(node, key, _ENTRY_KEYS)
    if "path" not in fields:
        raise _error(node, key, "needs a 'path' (a glob such as notebooks/*.ipynb)")
    glob = _string(fields["path"], f"{key}.path")
    if Path(glob).is_absolute() or ".." in Path(glob).parts:
        raise _error(fields["path"], f"{key}.path", f"{glob!r} must be relative to the repository's root")
    kind: Kind | None = None
    if "kind" in fields:
        value = _string(fields["kind"], f"{key}.kind")
        if value not in KINDS:
            raise _error(fields["kind"], f"{key}.kind", f"{value!r} is unknown; use serving or training")
        kind = value
    backend = _backend(fields["backend"], f"{key}.backend") if "backend" in fields else None
    return NotebookEntry(glob, kind, backend, node.start_mark.line + 1)


def _mapping(node: yaml.Node, key: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        raise _error(node, key, "must be a mapping of keys to values")
    out: dict[str, yaml.Node] = {}
    for k, v in node.value:
        name = k.value if isinstance(k, yaml.ScalarNode) else "?"
        if name not in allowed:
            where = "" if key == "the file" else f" in {key}"
            raise _error(k, name, f"is not a key nb2svc knows{where}; use {', '.join(allowed)}")
        if name in out:
            raise _error(k, name, "appears twice")
        out[name] = v
    return out


def _string(node: yaml.Node, key: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str" or not node.value.strip():
        raise _error(node, key, "must be a non-empty string")
    return str(node.value).strip()


def _backend(node: yaml.Node, key: str) -> Backend:
    value = _string(node, key)
    if value not in BACKENDS:
        raise _error(node, key, f"{value!r} is unknown; use {' or '.join(BACKENDS)}")
    return value


def _error(node: yaml.Node, key: str, problem: str) -> ProjectError:
    return ProjectError(f"{CONFIG_FILE} (line {node.start_mark.line + 1}): key '{key}' {problem}")
