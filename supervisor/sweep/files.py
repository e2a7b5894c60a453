"""Where a sweep's state lives, and its records: files in ``<state>/sweeps/<id>/``, never the daemon's store.

    spec.json      the checked sweep file, the base config's text, the create-time cwd (written once)
    trials.jsonl   what happened to each trial, appended durably (see ``TrialRecord``)
    state.json     running | completed | stopped | failed, with a detail
    status.json    the worker's latest summary (trials with params and values, best)
    stop           present: ``sweep stop`` was asked (the worker stops its trials and ends)
    worker.lock    flock held by the live worker: never two workers on one sweep
    worker.log     the worker's output
    optuna.db      the Optuna study (SQLite), unless the sweep names another storage

Ask -> job is idempotent because the ``asked`` line (trial n, Optuna number, params and
the job name ``<sweep>-<n>``) is on disk before the job is submitted: a worker that
restarts finds the job by that name, or knows it was never created.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.jobfiles.atomic import append_json_line, read_json, read_json_lines, write_json_atomic
from supervisor.sweep.spec import SweepSpec

SWEEP_STATES = ("running", "completed", "stopped", "failed")
FINISHED = ("completed", "stopped", "failed")


def sweeps_dir(state_dir: Path) -> Path:
    return state_dir / "sweeps"


@dataclass
class TrialRecord:
    """One trial as the records tell it. ``outcome`` is set once Optuna has been told."""

    n: int
    number: int  # the Optuna trial number
    params: dict[str, Any]
    job_name: str
    job_id: str | None = None
    abandoned: bool = False  # asked, but its job was never created (a crash in between): not counted
    prune_requested: bool = False
    outcome: str | None = None  # complete | pruned | fail
    value: float | None = None
    detail: str = ""

    @property
    def counted(self) -> bool:
        """Counts toward ``run_cap``: it has a job, or its submit was refused."""
        return not self.abandoned and (self.job_id is not None or self.outcome is not None)

    @property
    def active(self) -> bool:
        return self.job_id is not None and self.outcome is None


@dataclass
class SweepDir:
    """One sweep's directory."""

    root: Path

    @property
    def id(self) -> str:
        return self.root.name

    @property
    def trials_path(self) -> Path:
        return self.root / "trials.jsonl"

    @property
    def lock(self) -> Path:
        return self.root / "worker.lock"

    @property
    def log(self) -> Path:
        return self.root / "worker.log"

    @property
    def stop_request(self) -> Path:
        return self.root / "stop"

    def storage_url(self, spec: SweepSpec) -> str:
        return spec.storage or f"sqlite:///{self.root / 'optuna.db'}"

    def job_name(self, n: int) -> str:
        return f"{self.id}-{n}"

    def meta(self) -> dict[str, Any]:
        """``spec.json``: {spec, config_text, cwd, created_at}."""
        data = read_json(self.root / "spec.json")
        if not isinstance(data, dict):
            raise FileNotFoundError(self.root / "spec.json")
        return data

    def spec(self) -> SweepSpec:
        return SweepSpec.from_dict(self.meta()["spec"])

    def state(self) -> dict[str, Any]:
        data = read_json(self.root / "state.json")
        return data if isinstance(data, dict) else {"state": "running", "detail": ""}

    def set_state(self, state: str, detail: str = "", **extra: Any) -> None:
        assert state in SWEEP_STATES
        write_json_atomic(self.root / "state.json", {"state": state, "detail": detail, "time": time.time(), **extra})

    def summary(self) -> dict[str, Any] | None:
        data = read_json(self.root / "status.json")
        return data if isinstance(data, dict) else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.root / "status.json", summary, durable=False)

    # -- trial records ---------------------------------------------------------------------------
    def record(self, event: str, n: int, **facts: Any) -> None:
        """Append one durable line; ``trials()`` folds them."""
        append_json_line(self.trials_path, {"event": event, "n": n, "time": time.time(), **facts})

    def trials(self) -> list[TrialRecord]:
        """Every trial, in order of n, from ``trials.jsonl``."""
        out: dict[int, TrialRecord] = {}
        for line in read_json_lines(self.trials_path):
            n, event = int(line["n"]), line.get("event")
            if event == "asked":
                out[n] = TrialRecord(n=n, number=int(line["number"]), params=dict(line["params"]),
                                     job_name=str(line["job_name"]))
                continue
            trial = out.get(n)
            if trial is None:
                continue
            if event == "job":
                trial.job_id = str(line["job_id"])
            elif event == "abandoned":
                trial.abandoned, trial.outcome, trial.detail = True, "fail", str(line.get("detail", ""))
            elif event == "prune":
                trial.prune_requested = True
            elif event == "told":
                trial.outcome = str(line["outcome"])
                trial.value = line.get("value")
                trial.detail = str(line.get("detail", ""))
        return [out[n] for n in sorted(out)]


def new_sweep_dir(state_dir: Path, name: str, *, spec: SweepSpec, config_text: str, cwd: str) -> SweepDir:
    """Create ``<state>/sweeps/<name>-<6 hex>`` with its spec and a running state."""
    parent = sweeps_dir(state_dir)
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        root = parent / f"{name}-{secrets.token_hex(3)}"
        try:
            root.mkdir()
            break
        except FileExistsError:
            continue
    sweep = SweepDir(root)
    write_json_atomic(root / "spec.json", {"spec": spec.to_dict(), "config_text": config_text, "cwd": cwd,
                                           "created_at": time.time()})
    sweep.set_state("running")
    return sweep


def list_sweeps(state_dir: Path) -> list[SweepDir]:
    """Every sweep with a spec, oldest first."""
    parent = sweeps_dir(state_dir)
    if not parent.is_dir():
        return []
    found = [SweepDir(p) for p in parent.iterdir() if (p / "spec.json").is_file()]
    return sorted(found, key=lambda s: (s.root / "spec.json").stat().st_mtime)
