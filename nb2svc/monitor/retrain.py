"""The retrain rule: on drift (or a performance bound) start a run on the training function, wait for it, and
(``deploy:``) build the serving image with the run's artifact and roll it out with the deploy engine.

Once per cooldown, kept in the log's own database (key ``monitor.retrain:SERVICE``), so a restarted monitor
keeps it. A failed run or a refused roll-out leaves the old version serving, and says so.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ..errors import Nb2svcError
from ..runtime.predictions import PredictionLog
from .config import DeployConfig, RetrainConfig
from .report import Report

log = logging.getLogger("nb2svc.monitor")
_TERMINAL = ("succeeded", "failed", "cancelled")
_POLL = 1.0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def reason(rule_config: RetrainConfig, report: Report) -> str | None:
    """Why the rule fires on ``report``, or None."""
    rule = rule_config.when
    if rule.metric is None:
        return f"drift on {', '.join(report.drifted)}" if report.drifted else None
    for name, perf in report.performance.items():
        if perf.metric == rule.metric and rule.output in (None, name) and rule.holds(perf.value):
            return f"{name} {perf.metric} {perf.value:.4g} {rule.op} {rule.bound:g} (n={perf.n})"
    return None


class Retrainer:
    """Applies one rule for one service; ``deployer`` (tests, other engines) replaces the default build + roll-out."""

    def __init__(
        self,
        config: RetrainConfig,
        service: str,
        log_db: PredictionLog,
        *,
        dry_run: bool = False,
        deployer: Callable[[DeployConfig, str, str], dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        self.service = service
        self.db = log_db
        self.dry_run = dry_run
        self.deployer = deployer or build_and_roll_out
        self._key = f"monitor.retrain:{service}"

    def state(self) -> dict[str, Any] | None:
        raw = self.db.get_meta(self._key)
        return None if raw is None else dict(json.loads(raw))

    def _save(self, state: dict[str, Any]) -> None:
        self.db.set_meta(self._key, json.dumps(state))

    def apply(self, report: Report) -> dict[str, Any]:
        """One step of the rule; returns what happened (the report's ``retrain`` entry)."""
        out: dict[str, Any] = {"rule": self.config.when.text, "dry_run": self.dry_run}
        why = reason(self.config, report)
        out["triggered"] = why is not None
        if why is None:
            out["action"] = "none"
            return out
        out["reason"] = why
        last = self.state()
        now = time.time()
        if last is not None and now - float(last["at"]) < self.config.cooldown:
            out["action"] = "cooldown"
            out["last"] = last
            out["next_allowed_at"] = _iso(float(last["at"]) + self.config.cooldown)
            log.info(
                "retrain: %s, but in cooldown until %s (last: run %s)", why, out["next_allowed_at"], last.get("run")
            )
            return out
        if self.dry_run:
            out["action"] = "would_start"
            out["training"] = self.config.training
            out["parameters"] = dict(self.config.parameters)
            if self.config.deploy:
                out["would_deploy"] = {
                    "name": self.config.deploy.name,
                    "image": f"{self.config.deploy.image}:retrain-RUN",
                }
            log.info(
                "retrain (dry run): %s; would start a run on %s with %s",
                why,
                self.config.training,
                json.dumps(self.config.parameters),
            )
            return out
        state: dict[str, Any] = {"at": now, "reason": why, "status": "starting", "run": None}
        self._save(state)  # the cooldown starts now, whatever happens next
        out.update(self._run(state, why))
        return out

    def _run(self, state: dict[str, Any], why: str) -> dict[str, Any]:
        url = self.config.training
        try:
            r = httpx.post(f"{url}/runs", json=dict(self.config.parameters), timeout=30)
            if r.status_code not in (200, 202):
                raise Nb2svcError(f"POST {url}/runs answered {r.status_code}: {r.text[:300]}")
            run_id = str(r.json()["id"])
            state.update(run=run_id, status="running")
            self._save(state)
            log.info("retrain: %s; started run %s on %s", why, run_id, url)
            record = _wait(url, run_id, self.config.timeout)
        except (httpx.HTTPError, Nb2svcError) as e:
            state.update(status="failed", error=str(e))
            self._save(state)
            log.error("retrain: the run could not be started or followed (%s); the old version keeps serving", e)
            return {"action": "failed", "run": state["run"], "error": str(e)}
        run_id = state["run"]
        if record.get("status") != "succeeded":
            error = (record.get("error") or {}).get("message") or record.get("status")
            state.update(status="failed", error=error)
            self._save(state)
            log.error(
                "retrain: run %s ended %s (%s); the old version keeps serving", run_id, record.get("status"), error
            )
            return {"action": "failed", "run": run_id, "error": error}
        log.info("retrain: run %s succeeded (outputs %s)", run_id, json.dumps(record.get("outputs"))[:300])
        result: dict[str, Any] = {"action": "trained", "run": run_id, "outputs": record.get("outputs")}
        if self.config.deploy is not None:
            try:
                result.update(self.deployer(self.config.deploy, url, run_id))
                result["action"] = "deployed"
                log.info("retrain: run %s rolled out as %s to %s", run_id, result.get("image"), self.config.deploy.name)
            except Nb2svcError as e:
                result.update(action="deploy_failed", error=e.message)
                log.error(
                    "retrain: the roll-out of run %s failed (%s); the old version keeps serving", run_id, e.message
                )
        state.update(status=result["action"], image=result.get("image"), error=result.get("error"))
        self._save(state)
        return result


def _wait(url: str, run_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{url}/runs/{run_id}", timeout=30)
        if r.status_code != 200:
            raise Nb2svcError(f"GET {url}/runs/{run_id} answered {r.status_code}")
        record: dict[str, Any] = r.json()
        if record.get("status") in _TERMINAL:
            return record
        if time.monotonic() > deadline:
            raise Nb2svcError(f"run {run_id} did not finish within {timeout:g} s")
        time.sleep(_POLL)


def download_artifacts(url: str, run_id: str, prefix: str, into: Path) -> list[str]:
    """The run's artifacts under ``prefix`` (a folder like ``model/``, a file, or "" for all) into ``into``."""
    record = httpx.get(f"{url}/runs/{run_id}", timeout=30).json()
    folder = prefix.rstrip("/")
    wanted = [a for a in record.get("artifacts", []) if not folder or a == folder or a.startswith(folder + "/")]
    if not wanted:
        listed = ", ".join(record.get("artifacts", [])) or "none"
        raise Nb2svcError(f"run {run_id} has no artifact {prefix!r}", f"its artifacts: {listed}")
    for path in wanted:
        if not folder:
            rel = path
        elif path == folder:  # one file
            rel = Path(path).name
        else:
            rel = path[len(folder) + 1 :]
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with httpx.stream("GET", f"{url}/runs/{run_id}/artifacts/{path}", timeout=300) as r:
            if r.status_code != 200:
                raise Nb2svcError(f"GET {url}/runs/{run_id}/artifacts/{path} answered {r.status_code}")
            with target.open("wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
    return wanted


def build_and_roll_out(deploy: DeployConfig, url: str, run_id: str) -> dict[str, Any]:
    """Build the serving image with the run's artifact, push it, and roll the deployment to it (the engine)."""
    from ..build import build, push
    from ..deploy.catalog import read_image
    from ..deploy.engine import DeployOptions, engine
    from ..render import Artifact, BuildOptions, render
    from ..spec import inspect_notebook

    ref = f"{deploy.image}:retrain-{run_id}"
    with tempfile.TemporaryDirectory(prefix="nb2svc-retrain-") as tmp:
        model = Path(tmp) / "artifact"
        files = download_artifacts(url, run_id, deploy.artifact, model)
        log.info("retrain: downloaded %d artifact files of run %s", len(files), run_id)
        options = BuildOptions(
            backend=deploy.backend,  # type: ignore[arg-type]  # checked by render
            base=deploy.base,
            artifacts=(Artifact(model, deploy.dest),),
            env=tuple(deploy.env.items()),
        )
        context = render(inspect_notebook(deploy.notebook), Path(tmp) / "context", options, image=ref)
        build(context, ref, progress=lambda line: log.debug("build: %s", line))
    pushed = push(ref)
    log.info("retrain: built and pushed %s (%s)", ref, pushed)
    image = read_image(ref)
    deployment = engine(deploy.engine).deploy(
        deploy.name, image, DeployOptions(env={"NB2SVC_IMAGE": ref}), progress=lambda line: log.info("deploy: %s", line)
    )
    return {"image": ref, "pushed": pushed, "url": deployment.url, "deployment": deployment.name}
