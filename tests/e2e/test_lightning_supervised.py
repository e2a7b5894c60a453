"""Real Lightning under the real daemon: the digits example, killed, hung, rebooted and out of time.

Each attempt is a real `python -m trainer` process (Lightning's import alone takes seconds
here), so these are the slowest tests; the fake-trainer tests in tests/integration cover
the same paths quickly and in more variations.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.jobfiles.layout import JobLayout
from tests.support.harness import REPO, DaemonProc, wait_for
from tests.support.resume_oracle import resume_for

pytestmark = [pytest.mark.e2e, pytest.mark.lightning]

DIGITS = REPO / "configs" / "digits.yaml"
FAULTY = "trainer.examples.faulty.FaultyDigitsClassifier"
# small and quick, checkpoints often, no W&B unless a test wants it; cold restarts (no standby: its
# imports would only compete for the CPU here; tests/e2e/test_standby.py has the standby's takeovers)
BASE = ["trainer.max_epochs=6", "checkpoint.every_n_train_steps=10", "logger.wandb.mode=disabled",
        "supervision.standby=off"]






def _saved_by(d: DaemonProc, job: str, n: int, at_least: int = 1) -> dict[str, Any]:
    def saved() -> dict[str, Any] | None:
        status = d.status(job)
        mine = [e for e in d.client().call("events", job=job) if e["kind"] == "checkpoint" and e["attempt"] == n]
        return status if len(mine) >= at_least else None

    return wait_for(saved, timeout=180, interval=0.2, what=f"attempt {n} to save {at_least} checkpoint(s)")


def test_two_kills_two_restarts_each_from_the_best_checkpoint_then_completed(real_daemon: DaemonProc) -> None:
    d = real_daemon
    job = d.submit(DIGITS, *BASE, f"model.class_path={FAULTY}", "model.init_args.step_delay=0.03")
    for n in (1, 2):
        pid = d.live_pid(job, n)
        _saved_by(d, job, n, at_least=2)
        os.kill(pid, signal.SIGKILL)
        psutil.Process(pid).wait(timeout=30) if psutil.pid_exists(pid) else None
    final = d.wait_state(job, "completed", "failed", timeout=300)
    # the best by the manifest's lines of the attempts before each (the tests' rule, not the daemon's)
    manifest = JobLayout(Path(final["job_dir"])).manifest
    resumed_expected = [resume_for(manifest, 2), resume_for(manifest, 3)]
    assert final["state"] == "completed" and final["end_reason"] == "finished"
    assert final["restarts"] == 2
    reasons = [a["reason"] for a in final["attempts"]]
    assert reasons == ["crash", "crash", "completed"]
    assert [a["signal"] for a in final["attempts"][:2]] == ["SIGKILL", "SIGKILL"]
    assert [a["resumed_from"] for a in final["attempts"][1:]] == resumed_expected
    # global step continued from the checkpoint: 6 epochs of 23 steps
    assert final["global_step"] == 6 * 23
    assert all(Path(c["path"]).exists() for c in final["checkpoints"])


def test_daemon_sigkill_the_trainer_is_adopted_and_finishes_in_one_attempt(real_daemon: DaemonProc) -> None:
    d = real_daemon
    # 6 epochs of 23 steps at >= 0.1 s: the fit outlasts the daemon's restart (a trainer that ended while the
    # daemon was down would be "collected", and fail this test, not pass it)
    job = d.submit(DIGITS, *BASE, f"model.class_path={FAULTY}", "model.init_args.step_delay=0.1")
    pid = d.live_pid(job, 1)
    d.kill(signal.SIGKILL)
    assert psutil.Process(pid).is_running()
    d.start("hang.min_timeout=4")
    final = d.wait_state(job, "completed", "failed", timeout=300)
    assert final["state"] == "completed" and len(final["attempts"]) == 1
    assert final["attempts"][0]["pid"] == pid
    kinds = [e["kind"] for e in d.client().call("events", job=job)]
    assert "adopted" in kinds and "collected" not in kinds, kinds  # the new daemon followed the live trainer


def test_reboot_relaunches_from_the_best_checkpoint(real_daemon: DaemonProc) -> None:
    d = real_daemon
    d.kill(signal.SIGTERM)
    d.start(ML_SUPERVISOR_BOOT_ID="boot-1")
    job = d.submit(DIGITS, *BASE, f"model.class_path={FAULTY}", "model.init_args.step_delay=0.03")
    pid = d.live_pid(job, 1)
    status = _saved_by(d, job, 1, at_least=2)
    # the node goes down: the daemon and the whole attempt die at once
    d.kill(signal.SIGKILL)
    monitor = psutil.Process(pid).parent()
    os.killpg(pid, signal.SIGKILL)
    monitor.kill()
    assert status["checkpoints"], "attempt 1 saved checkpoints before the reboot"
    d.start(ML_SUPERVISOR_BOOT_ID="boot-2")
    final = d.wait_state(job, "completed", "failed", timeout=300)
    assert final["state"] == "completed"
    first, second = final["attempts"]
    assert first["reason"] == "reboot"
    # the best by attempt 1's manifest lines (the tests' rule, not the daemon's)
    assert second["resumed_from"] == resume_for(JobLayout(Path(status["job_dir"])).manifest, 2)


def test_a_budget_ends_the_job_completed_with_its_best_checkpoint(real_daemon: DaemonProc) -> None:
    d = real_daemon
    # The budget runs from the attempt's start, Lightning's cold import included (20 s on a loaded box):
    # 45 s leaves the fit time to save, and the end is the trainer's own deadline stop or the daemon's.
    job = d.submit(DIGITS, "trainer.max_epochs=1000", "checkpoint.every_n_train_steps=20",
                   "logger.wandb.mode=disabled", "supervision.budget=45s", "supervision.standby=off")
    final = d.wait_state(job, "completed", "failed", timeout=300)
    assert final["state"] == "completed" and final["end_reason"] == "budget"
    assert 40 <= final["budget"]["used"] <= 45 + 60 + 30  # not cut short; within the stop grace (60 s) + slack
    assert final["best_checkpoint"] is not None and Path(final["best_checkpoint"]["path"]).exists()
    assert Path(final["job_dir"], "best.ckpt").resolve() == Path(final["best_checkpoint"]["path"])


def test_a_hung_training_step_is_detected_stacks_saved_and_the_job_completes(real_daemon: DaemonProc) -> None:
    d = real_daemon
    job = d.submit(DIGITS, *BASE, "trainer.max_epochs=3", f"model.class_path={FAULTY}",
                   "model.init_args.hang_at_step=30")
    final = d.wait_state(job, "completed", "failed", timeout=300)
    assert final["state"] == "completed"
    first = final["attempts"][0]
    assert first["reason"] == "hang"
    stacks = (Path(final["job_dir"]) / "attempts" / "1" / "stacks.txt").read_text()
    assert "training_step" in stacks and "faulty.py" in stacks
    # auto timeout: 5x the slowest step, at least hang.min_timeout (4 s), plus the 5 s tick
    events = d.client().call("events", job=job)
    hang = next(e for e in events if e["kind"] == "stopping")
    assert "no progress" in hang["message"]
    assert final["attempts"][1]["resumed_from"] == resume_for(JobLayout(Path(final["job_dir"])).manifest, 2)


def test_a_class_path_that_does_not_import_is_refused_at_submit(real_daemon: DaemonProc) -> None:
    d = real_daemon
    proc = d.ctl("submit", str(DIGITS), "model.class_path=nowhere.Model", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"supervisorctl: error: {DIGITS}: model.class_path: cannot import")
    assert "Traceback" not in proc.stderr
    proc = d.ctl("submit", str(DIGITS), "data.class_path=trainer.examples.digits.DigitsClassifier", check=False)
    assert proc.returncode == 2 and "data.class_path" in proc.stderr and "LightningDataModule" in proc.stderr
    assert list((d.state_dir / "jobs").iterdir()) == []
