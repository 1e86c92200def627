"""Reading a Swarm service's tasks: which run its current spec, and why the failed ones failed.

The cause comes from the task's own log, read through the service's log (so a task on any node is read):
the runtime writes ``setup failed: cell N raised …`` when a notebook's setup raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import docker.errors

ENDED = {"failed", "rejected", "shutdown", "complete", "orphaned", "remove"}


def runs(task: Mapping[str, Any], template: Mapping[str, Any]) -> bool:
    """Whether ``task`` was made from the service's current task template (Swarm copies it into each task)."""
    spec = task["Spec"]
    return all(spec.get(k) == v for k, v in template.items() if k != "Runtime")  # Runtime: a default it adds


def task_logs(service: Any, tasks: Sequence[Mapping[str, Any]]) -> Mapping[str, Sequence[str]]:
    """The log lines of ``tasks`` (by task id), read through the service's log (any node's tasks)."""
    ids = {t["ID"] for t in tasks}
    lines: dict[str, list[str]] = {}
    if not ids:
        return lines
    try:
        for chunk in service.logs(details=True, stdout=True, stderr=True, tail=200):
            details, _, message = chunk.decode(errors="replace").rstrip().partition(" ")
            task = dict(p.partition("=")[::2] for p in details.split(",")).get("com.docker.swarm.task.id")
            if isinstance(task, str) and task in ids and message.strip():
                lines.setdefault(task, []).append(message.strip())
    except docker.errors.APIError:
        pass
    return lines


def setup_failed(service: Any, tasks: Sequence[Mapping[str, Any]]) -> str | None:
    """The runtime's ``setup failed: cell N raised …`` line, from the first of ``tasks`` that logged one."""
    starting = [t for t in tasks if t["Status"]["State"] in {"starting", "running", "failed"}]
    for messages in task_logs(service, starting).values():
        for message in messages:
            if message.startswith("setup failed"):
                return str(message)
    return None


def cause(service: Any) -> str:
    """Why the latest failed tasks failed: the runtime's own log line where it wrote one."""
    failed = [t for t in service.tasks() if t["Status"]["State"] in ENDED and t["Status"].get("Err")]
    failed.sort(key=lambda t: str(t["Status"].get("Timestamp", "")), reverse=True)
    failed = failed[:5]
    logs = task_logs(service, failed)
    for t in failed:
        setup = [m for m in logs.get(t["ID"], []) if m.startswith("setup failed")]
        if setup:
            return setup[-1]
    for t in failed:
        if logs.get(t["ID"]):
            return f"{t['Status']['Err']}; its log ends: {logs[t['ID']][-1]}"
    return str(failed[0]["Status"]["Err"]) if failed else "its tasks failed (see `docker service ps`)"
