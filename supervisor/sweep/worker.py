"""The sweep worker: ``python -m supervisor.sweep.worker --state-dir DIR --sweep ID``.

Owns the Optuna study and talks to the daemon like any client (submit / status /
stop over the Unix socket), so the daemon never imports Optuna (or torch, which
some samplers pull in). It holds ``worker.lock`` for its whole life: a second
worker for the same sweep exits at once.

On start it reconciles: an ``asked`` trial whose job exists (found by its name) is
adopted; one whose job was never created (a crash between ask and submit) is told
FAIL and not counted; Optuna trials left RUNNING with no job are told FAIL. Then
it keeps ``parallel`` trials going until ``run_cap`` trials have jobs (or the grid
is exhausted), feeding hyperband each new validation value, and ends the sweep.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from supervisor.api.client import Client
from supervisor.errors import DaemonUnavailable, SupervisorError
from supervisor.processes.control import try_lock
from supervisor.sweep import search
from supervisor.sweep.files import SweepDir, TrialRecord
from supervisor.sweep.spec import SweepSpec, override_for
from supervisor.sweep.summary import build_summary
from supervisor.sweep.values import trial_value, validation_values

log = logging.getLogger("ml_supervisor.sweep")
# A turn costs the daemon one cheap `job_states` call (the full status of each trial only when it
# ends); 1 s keeps the hyperband decisions close to the validations.
POLL_INTERVAL = float(os.environ.get("ML_SUPERVISOR_SWEEP_POLL_S", "1.0"))
TERMINAL = ("completed", "failed", "stopped")


class SweepWorker:
    """Runs one sweep to its end (or until the daemon asks it to stop)."""

    def __init__(self, state_dir: Path, sweep_id: str, *, poll_interval: float = POLL_INTERVAL) -> None:
        self.sweep = SweepDir(state_dir / "sweeps" / sweep_id)
        self.meta = self.sweep.meta()
        self.spec: SweepSpec = self.sweep.spec()
        self.client = Client(state_dir, timeout=600.0)
        self.poll_interval = poll_interval
        self.study = search.open_study(self.spec, study_name=self.sweep.id,
                                       storage=self.sweep.storage_url(self.spec))

    # -- daemon calls, patient across a daemon restart -------------------------------------------
    def call(self, op: str, **args: Any) -> Any:
        """``op`` on the daemon, waiting for it while it is away (it restarts, or the node reboots)."""
        while True:
            try:
                return self.client.call(op, **args)
            except DaemonUnavailable:
                time.sleep(1.0)

    def submit_once(self, name: str, **args: Any) -> dict[str, Any]:
        """Submit the job ``name`` exactly once: a daemon lost mid-call may have created it before dying."""
        while True:
            try:
                return dict(self.client.call("submit", name=name, **args))
            except DaemonUnavailable:
                time.sleep(1.0)
            existing = [j for j in self.call("list") if j["name"] == name]
            if existing:
                return dict(existing[0])

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> str:
        """Reconcile, then drive trials until the sweep ends; its final state."""
        self.reconcile()
        while True:
            trials = self.sweep.trials()
            if self.sweep.stop_request.exists():
                return self.finish_stopped(trials)
            active = [t for t in trials if t.active]
            states = self.call("job_states", jobs=[t.job_id for t in active]) if active else {}
            for trial in active:
                self.follow(trial, states.get(trial.job_id))
            trials = self.sweep.trials()
            self.start_trials(trials)
            trials = self.sweep.trials()
            self.publish(trials)
            if not any(t.active for t in trials) and not self.can_ask(trials):
                return self.finish(trials)
            time.sleep(self.poll_interval)

    def reconcile(self) -> None:
        """Settle what a crash (of the worker, the daemon or the node) left half done."""
        jobs_by_name = {j["name"]: j["id"] for j in self.call("list")}
        ours = set()
        for trial in self.sweep.trials():
            ours.add(trial.number)
            if trial.job_id is not None or trial.outcome is not None:
                if trial.outcome is not None and search.state_of(self.study, trial.number).name == "RUNNING":
                    search.tell(self.study, trial.number, trial.outcome, trial.value)  # told on disk, not in Optuna
                if trial.active and trial.prune_requested:  # the crash may have come before the stop call
                    try:
                        self.call("stop", job=trial.job_id)
                    except SupervisorError:
                        pass  # already stopping or ended
                continue
            job_id = jobs_by_name.get(trial.job_name)
            if job_id is not None:
                self.sweep.record("job", trial.n, job_id=job_id)
                log.info("trial %d: adopted job %s", trial.n, job_id)
            else:
                search.abandon(self.study, self.spec, trial.number, trial.params)
                self.sweep.record("abandoned", trial.n, detail="the worker stopped before its job was created")
                log.info("trial %d: never got a job; told FAIL, not counted", trial.n)
        for number in search.running_numbers(self.study):
            if number not in ours:  # asked, then a crash before even the record: nothing else knows it
                search.tell(self.study, number, "fail", None)

    def can_ask(self, trials: list[TrialRecord]) -> bool:
        counted = sum(1 for t in trials if t.counted)
        return counted < self.spec.run_cap and not self.sweep.stop_request.exists()

    def start_trials(self, trials: list[TrialRecord]) -> None:
        active = sum(1 for t in trials if t.active)
        counted = sum(1 for t in trials if t.counted)
        next_n = max((t.n for t in trials), default=0) + 1
        while active < self.spec.parallel and counted < self.spec.run_cap and not self.sweep.stop_request.exists():
            self.start_one(next_n)
            next_n += 1
            active += 1
            counted += 1

    def start_one(self, n: int) -> None:
        trial, params = search.ask(self.study, self.spec)
        name = self.sweep.job_name(n)
        # On disk before the job exists: a restart finds the job by this name, or knows it never existed.
        self.sweep.record("asked", n, number=trial.number, params=params, job_name=name)
        overrides = [*self.spec.overrides, *(override_for(k, v) for k, v in params.items()),
                     f"logger.wandb.group={self.sweep.id}"]
        try:
            job = self.submit_once(name, config_path=self.spec.config, cwd=self.meta["cwd"],
                                   config_text=self.meta["config_text"], overrides=overrides)
        except SupervisorError as exc:
            # validated like any submit: this point's config is refused; the trial fails, the sweep goes on
            search.tell(self.study, trial.number, "fail", None)
            self.sweep.record("told", n, outcome="fail", value=None, detail=f"submit refused: {exc.message}")
            log.warning("trial %d: submit refused: %s", n, exc.message)
            return
        self.sweep.record("job", n, job_id=job["id"])
        log.info("trial %d: job %s %s", n, job["id"], params)

    def follow(self, trial: TrialRecord, job: dict[str, Any] | None) -> None:
        """Feed the pruner, and settle the trial once its job has ended (``job``: its state and dir)."""
        assert trial.job_id is not None
        if job is None or job["state"] in TERMINAL:  # None: gone from the store; status says how
            self.settle(trial, self.call("status", job=trial.job_id))
            return
        if self.spec.hyperband is not None and not trial.prune_requested:
            values = validation_values(job["job_dir"], self.spec.metric_name)
            handle = search.trial_by_number(self.study, trial.number)
            if search.report(handle, values):
                self.sweep.record("prune", trial.n, iteration=len(values))
                log.info("trial %d: pruned after %d validations", trial.n, len(values))
                self.call("stop", job=trial.job_id)

    def settle(self, trial: TrialRecord, status: dict[str, Any]) -> None:
        cfg = OmegaConf.load(Path(status["job_dir"]) / "config.yaml")
        value = trial_value(status, cfg, self.spec.metric_name, self.spec.goal)
        if trial.prune_requested:
            outcome, detail = "pruned", "pruned by hyperband"
        elif status["state"] == "completed" and value is not None:
            outcome, detail = "complete", ""
        elif status["state"] == "completed":
            outcome, detail = "fail", f"the trial never logged {self.spec.metric_name}"
        else:
            outcome = "fail"
            detail = f"its job ended {status['state']} ({status.get('end_reason') or 'no reason'})"
        search.tell(self.study, trial.number, outcome, value)
        self.sweep.record("told", trial.n, outcome=outcome, value=value, detail=detail)
        log.info("trial %d: %s value=%s %s", trial.n, outcome, value, detail)

    def finish(self, trials: list[TrialRecord]) -> str:
        done = [t for t in trials if t.outcome == "complete"]
        state = "completed" if done else "failed"
        detail = "" if done else "no trial finished with a value"
        summary = self.publish(trials)
        self.sweep.set_state(state, detail, best=summary.get("best"))
        return state

    def finish_stopped(self, trials: list[TrialRecord]) -> str:
        """``sweep stop``: stop every running trial, wait for them, settle them; no new trials."""
        for trial in trials:
            if trial.active:
                assert trial.job_id is not None
                try:
                    self.call("stop", job=trial.job_id)
                except SupervisorError:
                    pass  # already ended
        while True:
            trials = self.sweep.trials()
            for trial in trials:
                if trial.active:
                    assert trial.job_id is not None
                    status = self.call("status", job=trial.job_id)
                    if status["state"] in TERMINAL:
                        self.settle(trial, status)
            if not any(t.active for t in self.sweep.trials()):
                break
            time.sleep(self.poll_interval)
        summary = self.publish(self.sweep.trials())
        self.sweep.set_state("stopped", "stopped by the user", best=summary.get("best"))
        return "stopped"

    def publish(self, trials: list[TrialRecord]) -> dict[str, Any]:
        summary = build_summary(self.spec, trials)
        self.sweep.write_summary(summary)
        return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="supervisor.sweep.worker")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--sweep", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sweep = SweepDir(Path(args.state_dir) / "sweeps" / args.sweep)
    fd = try_lock(sweep.lock)
    if fd is None:
        log.info("another worker runs sweep %s", args.sweep)
        return 0
    (sweep.root / "worker.pid").write_text(str(os.getpid()))
    try:
        state = SweepWorker(Path(args.state_dir), args.sweep).run()
    except Exception as exc:
        log.exception("sweep %s: the worker failed", args.sweep)
        sweep.set_state("failed", f"the sweep worker failed: {type(exc).__name__}: {exc}")
        return 1
    log.info("sweep %s %s", args.sweep, state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
