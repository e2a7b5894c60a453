"""The sweep's alerts: finished (best value and params) and failed, into W&B (the sweep's group) and the log."""

from __future__ import annotations

import time
from typing import Any

from supervisor.alerts.model import Alert, WandbTarget
from supervisor.core.submit import SubmitRequest, load_request_config
from supervisor.errors import SupervisorError
from supervisor.sweep.files import SweepDir


def sweep_alert(sweep: SweepDir, state: dict[str, Any]) -> Alert | None:
    """The alert for a sweep that ended (None for a user's stop: they know)."""
    kind = state.get("state")
    if kind not in ("completed", "failed"):
        return None
    spec = sweep.spec()
    best = state.get("best")
    if kind == "completed" and best:
        params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
        text = (f"Sweep {sweep.id} finished: best {spec.metric_name} = {best['value']} (trial {best['n']}, "
                f"job {best['job_id']}).\nparams: {params}\nsee: supervisorctl sweep status {sweep.id}")
        title, level, event = f"{spec.name}: sweep finished", "INFO", "sweep_finished"
    else:
        text = (f"Sweep {sweep.id} failed: {state.get('detail') or 'no trial finished'}.\n"
                f"see: supervisorctl sweep status {sweep.id} and {sweep.log}")
        title, level, event = f"{spec.name}: sweep failed", "ERROR", "sweep_failed"
    return Alert(job_id=sweep.id, job_name=spec.name, event=event, title=title, text=text, level=level,
                 time=time.time(), wandb=_target(sweep), details={"sweep": sweep.id, "state": kind, "best": best})


def _target(sweep: SweepDir) -> WandbTarget | None:
    """The base config's W&B project, the sweep's group (where its trials' runs are)."""
    meta = sweep.meta()
    spec = sweep.spec()
    try:
        cfg = load_request_config(SubmitRequest(config_path=spec.config, cwd=meta["cwd"],
                                                config_text=meta["config_text"], overrides=spec.overrides))
    except SupervisorError:
        return None
    section = cfg.logger.wandb
    if section.mode == "disabled":
        return None
    return WandbTarget(project=str(section.project or "ml-supervisor"), entity=section.entity or None,
                       group=sweep.id, run_id=sweep.id, dir=str(sweep.root / "wandb"), mode=str(section.mode))
