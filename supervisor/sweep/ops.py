"""The sweep API operations (``sweep_create``, ``sweep_status``, ``sweep_list``, ``sweep_stop``): files only.

``Operations`` delegates here; job states come from the daemon's store through ``job_state``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor.core.submit import SubmitRequest, load_request_config
from supervisor.errors import ConfigError, SupervisorError
from supervisor.jobfiles.atomic import write_json_atomic
from supervisor.sweep.files import FINISHED, SweepDir, list_sweeps, new_sweep_dir, sweeps_dir
from supervisor.sweep.spec import SweepSpec, load_sweep_file, override_for

JobState = Callable[[str], str | None]


class SweepNotFound(SupervisorError):
    code = "sweep_not_found"
    exit_status = 3


def create_sweep(state_dir: Path, *, sweep_path: str, cwd: str, sweep_text: str | None = None,
                 overrides: list[str] | None = None) -> SweepDir:
    """Check the sweep file and its base config (with a sample point), then create the sweep's dir."""
    path = sweep_path if Path(sweep_path).is_absolute() else str(Path(cwd) / sweep_path)
    spec = load_sweep_file(path, overrides=list(overrides or []), text=sweep_text)
    spec = SweepSpec.from_dict({**spec.to_dict(), "source": sweep_path})
    try:
        config_text = Path(spec.config).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(sweep_path, "config", f"cannot read {spec.config}: {exc.strerror or exc}") from None
    # One sample point through the job schema: a parameter key the schema refuses fails here, not per trial.
    sample = [override_for(p.key, _sample(p)) for p in spec.parameters]
    load_request_config(SubmitRequest(config_path=spec.config, cwd=cwd, config_text=config_text,
                                      overrides=[*spec.overrides, *sample]))
    return new_sweep_dir(state_dir, spec.name, spec=spec, config_text=config_text, cwd=cwd)


def _sample(param: Any) -> Any:
    points = param.grid_points()
    return points[0] if points else param.min


def find_sweep(state_dir: Path, sweep: str) -> SweepDir:
    """A sweep by id, or by name when one sweep has it (the newest wins)."""
    direct = sweeps_dir(state_dir) / sweep
    if "/" not in sweep and (direct / "spec.json").is_file():
        return SweepDir(direct)
    named = [s for s in list_sweeps(state_dir) if s.spec().name == sweep]
    if named:
        return named[-1]
    raise SweepNotFound(f"no sweep {sweep!r} (see `supervisorctl sweep list`)")


def sweep_status(sweep: SweepDir, job_state: JobState) -> dict[str, Any]:
    """The ``sweep status --json`` object: the worker's summary, each trial's state refreshed from its job."""
    spec = sweep.spec()
    state = sweep.state()
    summary = sweep.summary() or {"trials": [], "best": None, "counted": 0}
    trials = []
    for trial in summary["trials"]:
        trial = dict(trial)
        if trial.get("job_id") and trial["state"] != "pruned":
            trial["state"] = job_state(trial["job_id"]) or trial["state"]
        trials.append(trial)
    best = summary.get("best")
    return {
        "id": sweep.id, "name": spec.name, "state": state.get("state", "running"), "detail": state.get("detail", ""),
        "method": spec.method, "metric": {"name": spec.metric_name, "goal": spec.goal},
        "run_cap": spec.run_cap, "parallel": spec.parallel, "seed": spec.seed,
        "grid_size": spec.grid_size, "config": spec.config, "source": spec.source,
        "parameters": [{"key": p.key, "distribution": p.distribution} for p in spec.parameters],
        "early_terminate": {"type": "hyperband", **spec.hyperband.__dict__} if spec.hyperband else None,
        "trials": trials,
        "best": {k: best[k] for k in ("job_id", "params", "value", "n")} if best else None,
        "note": "failed grid points are not retried" if spec.method == "grid" else "",
    }


def list_status(state_dir: Path, job_state: JobState) -> list[dict[str, Any]]:
    return [sweep_status(s, job_state) for s in list_sweeps(state_dir)]


def request_stop(sweep: SweepDir) -> None:
    """Ask the worker to stop the sweep (no new trials; running ones are stopped)."""
    if sweep.state().get("state") in FINISHED:
        return
    write_json_atomic(sweep.stop_request, {"by": "user"})
