"""The daemon for real: a real `ml-supervisor serve` process, real trainer processes (the fake
trainer: no torch, same file contracts), real signals, real SQLite."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from supervisor.jobfiles.atomic import read_json
from supervisor.jobfiles.layout import JobLayout
from supervisor.processes.control import try_lock
from tests.support.harness import DaemonProc, process_gone, wait_for, write_config
from tests.support.resume_oracle import best_not_newest, resume_for

pytestmark = pytest.mark.e2e


def _attempt_pid(d: DaemonProc, job: str, n: int) -> int:
    def pid() -> int | None:
        attempts = d.status(job)["attempts"]
        return attempts[n - 1]["pid"] if len(attempts) >= n else None

    return wait_for(pid, what=f"attempt {n} pid")


def test_crash_restarts_from_best_and_completes(daemon: DaemonProc) -> None:
    cfg = write_config(daemon.workdir, steps=30, step_time=0.02, ckpt_every=5, crash_at=12)
    job = daemon.submit(cfg)
    final = daemon.wait_state(job, "completed", "failed")
    assert final["state"] == "completed" and final["end_reason"] == "finished"
    assert final["restarts"] == 1
    first, second = final["attempts"]
    assert first["reason"] == "crash" and "boom at step 12" in first["detail"]
    assert first["exit_code"] == 1 and first["resumed_from"] is None
    # the best checkpoint when attempt 1 crashed (step 5: step 10 scores worse), not the newest (last.ckpt)
    assert second["resumed_from"] == best_not_newest(final["job_dir"], 2)
    assert second["resumed_from"].endswith("step=5.ckpt")
    assert second["reason"] == "completed"
    assert final["global_step"] == 30
    assert final["best_checkpoint"]["path"] == resume_for(JobLayout(Path(final["job_dir"])).manifest, 3)
    assert Path(final["job_dir"], "best.ckpt").resolve() == Path(final["best_checkpoint"]["path"])
    # the contract scripts rely on
    for key in ("id", "name", "state", "end_reason", "restarts", "global_step", "attempts", "checkpoints",
                "best_checkpoint", "budget", "wandb"):
        assert key in final
    for key in ("n", "pid", "gpus", "started_at", "ended_at", "exit_code", "signal", "reason", "resumed_from"):
        assert key in first
    assert set(final["budget"]) >= {"seconds", "used", "remaining"}
    assert set(final["wandb"]) >= {"run_id", "url", "dir"}


def test_sigkill_of_the_trainer_is_a_crash(daemon: DaemonProc) -> None:
    cfg = write_config(daemon.workdir, steps=40, step_time=0.05, ckpt_every=5)
    job = daemon.submit(cfg)
    pid = _attempt_pid(daemon, job, 1)
    wait_for(lambda: daemon.status(job)["global_step"] >= 12, what="progress")
    os.kill(pid, signal.SIGKILL)
    final = daemon.wait_state(job, "completed", "failed")
    assert final["state"] == "completed"
    assert final["attempts"][0]["reason"] == "crash"
    assert final["attempts"][0]["signal"] == "SIGKILL"
    assert final["attempts"][1]["resumed_from"] == best_not_newest(final["job_dir"], 2)


def test_daemon_sigkill_keeps_the_trainer_and_adopts_it(daemon: DaemonProc) -> None:
    # The trainer cannot finish before the new daemon adopted it, however slow its start (the gate file).
    gate = daemon.workdir / "may-finish"
    cfg = write_config(daemon.workdir, steps=60, step_time=0.05, ckpt_every=10, hold_until=str(gate))
    job = daemon.submit(cfg)
    pid = _attempt_pid(daemon, job, 1)
    daemon.kill(signal.SIGKILL)
    assert not process_gone(pid, timeout_s=0.5)  # the trainer lives on without its daemon
    daemon.start()

    def events() -> list[str]:
        return [e["kind"] for e in daemon.client().call("events", job=job)]

    wait_for(lambda: "adopted" in events(), timeout=60, what="the new daemon to adopt the running attempt")
    gate.touch()
    final = daemon.wait_state(job, "completed", "failed")
    assert final["state"] == "completed" and len(final["attempts"]) == 1
    assert final["attempts"][0]["pid"] == pid and "collected" not in events()


def test_attempt_that_ends_while_the_daemon_is_down_is_collected(daemon: DaemonProc) -> None:
    cfg = write_config(daemon.workdir, steps=15, step_time=0.05, ckpt_every=5)
    job = daemon.submit(cfg)
    _attempt_pid(daemon, job, 1)
    daemon.kill(signal.SIGKILL)
    layout = JobLayout(daemon.state_dir / "jobs" / job)
    wait_for(lambda: read_json(layout.attempt(1).monitor_exit), what="the attempt to end")
    daemon.start()
    final = daemon.wait_state(job, "completed", "failed")
    assert final["state"] == "completed" and len(final["attempts"]) == 1
    assert "collected" in [e["kind"] for e in json_lines(daemon.ctl("events", job, "--json").stdout)]


def test_reboot_relaunches_from_best_and_budget_keeps_counting(daemon: DaemonProc) -> None:
    daemon.kill(signal.SIGTERM)
    daemon.start(ML_SUPERVISOR_BOOT_ID="boot-A")
    cfg = write_config(daemon.workdir, steps=60, step_time=0.05, ckpt_every=5, supervision={"budget": "10m"})
    job = daemon.submit(cfg)
    wait_for(lambda: daemon.status(job)["global_step"] >= 12, what="progress")
    before = daemon.status(job)
    # a "reboot": the daemon and every trainer die at once; the node comes back with a new boot id
    daemon.kill(signal.SIGKILL)
    monitor = psutil.Process(before["attempts"][0]["pid"]).parent()
    os.killpg(before["attempts"][0]["pid"], signal.SIGKILL)
    monitor.kill()
    daemon.start(ML_SUPERVISOR_BOOT_ID="boot-B")
    restarted_at = time.time()
    final = daemon.wait_state(job, "completed", "failed")
    first, second = final["attempts"][:2]
    assert first["reason"] == "reboot"
    assert second["resumed_from"] == best_not_newest(final["job_dir"], 2)
    # the budget is wall clock since the first start: the downtime of the "reboot" counts
    assert final["budget"]["used"] >= restarted_at - before["first_started_at"] > before["budget"]["used"]
    assert final["first_started_at"] == before["first_started_at"]


def test_budget_stops_the_job_as_completed_with_its_best_checkpoint(daemon: DaemonProc) -> None:
    cfg = write_config(daemon.workdir, steps=100000, step_time=0.05, ckpt_every=10, ignore_deadline=True,
                       supervision={"budget": "4s"})
    job = daemon.submit(cfg)
    final = daemon.wait_state(job, "completed", "failed", timeout=120)
    assert final["state"] == "completed" and final["end_reason"] in ("budget",)
    # not before the budget; stopped by the daemon within its stop grace (5 s) and a loaded box's slack,
    # where the trainer (ignoring its deadline) would otherwise train for 80 minutes
    assert 3.5 <= final["budget"]["used"] <= 4 + 5 + 20
    assert final["best_checkpoint"] is not None


def test_stop_kills_the_whole_tree_without_orphans(daemon: DaemonProc) -> None:
    cfg = write_config(daemon.workdir, steps=100000, step_time=0.05, ckpt_every=10, spawn_child=True)
    job = daemon.submit(cfg)
    pid = _attempt_pid(daemon, job, 1)
    trainer = psutil.Process(pid)
    wait_for(lambda: trainer.children(), what="the trainer's child")
    tree = [trainer, *trainer.children(recursive=True)]
    daemon.ctl("stop", job)
    final = daemon.wait_state(job, "stopped", "completed", "failed")
    assert final["state"] == "stopped" and final["end_reason"] == "user"
    assert final["attempts"][0]["reason"] == "user_stop"
    _gone, alive = psutil.wait_procs(tree, timeout=5)
    assert not alive, f"processes survived the stop: {alive}"


def test_a_trainer_ignoring_sigterm_is_killed_after_the_grace_period(daemon: DaemonProc) -> None:
    cfg = write_config(daemon.workdir, steps=100000, step_time=0.05, ignore_sigterm=True,
                       supervision={"stop_grace": "1s"})
    job = daemon.submit(cfg)
    pid = _attempt_pid(daemon, job, 1)
    started = time.monotonic()
    daemon.ctl("stop", job)
    final = daemon.wait_state(job, "stopped", timeout=120)
    assert time.monotonic() - started < 40  # after the job's 1 s grace, not the 60 s default (slack: a loaded box)
    assert final["attempts"][0]["signal"] == "SIGKILL"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "sigkill" in [e["kind"] for e in json_lines(daemon.ctl("events", job, "--json").stdout)]


def test_no_progress_guard_fails_the_job(daemon: DaemonProc) -> None:
    cfg = write_config(daemon.workdir, steps=50, step_time=0.01, ckpt_every=10, crash_at=3, faults_on=[1, 2, 3, 4],
                       supervision={"no_progress_attempts": 3, "backoff": {"initial": "0.2s", "max": "0.5s"}})
    job = daemon.submit(cfg)
    final = daemon.wait_state(job, "failed", "completed")
    assert final["state"] == "failed" and final["end_reason"] == "no_progress"
    assert len(final["attempts"]) == 3


def test_max_restarts_fails_the_job(daemon: DaemonProc) -> None:
    cfg = write_config(daemon.workdir, steps=50, step_time=0.01, ckpt_every=2, crash_at=5, faults_on=[1, 2, 3, 4],
                       supervision={"max_restarts": 1})
    job = daemon.submit(cfg)
    final = daemon.wait_state(job, "failed", "completed")
    assert final["state"] == "failed" and final["end_reason"] == "max_restarts"
    assert final["restarts"] == 1 and len(final["attempts"]) == 2


def test_the_job_lock_is_held_while_a_trainer_lives(daemon: DaemonProc) -> None:
    cfg = write_config(daemon.workdir, steps=40, step_time=0.05)
    job = daemon.submit(cfg)
    _attempt_pid(daemon, job, 1)
    lock = JobLayout(daemon.state_dir / "jobs" / job).lock
    assert try_lock(lock) is None, "a live attempt must hold the job lock"
    daemon.wait_state(job, "completed")
    fd = wait_for(lambda: try_lock(lock), what="the lock to be released")
    os.close(fd)


def test_bad_configs_are_refused_at_submit_and_nothing_is_created(daemon: DaemonProc) -> None:
    jobs = daemon.state_dir / "jobs"
    bad = write_config(daemon.workdir, "bad", supervision={"budget": "soon"})
    proc = daemon.ctl("submit", str(bad), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"supervisorctl: error: {bad}: supervision.budget: "
                                   "expected a duration like 30s, 90m or 24h, got 'soon'")
    imports = write_config(daemon.workdir, "imports", check_error="cannot import 'nope.Model'")
    proc = daemon.ctl("submit", str(imports), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"supervisorctl: error: {imports}: model.class_path: cannot import 'nope.Model'"
    gpus = write_config(daemon.workdir, "gpus", supervision={"gpus": 1})
    proc = daemon.ctl("submit", str(gpus), check=False)
    assert proc.returncode != 0 and "supervision.gpus" in proc.stderr and "Traceback" not in proc.stderr
    assert list(jobs.iterdir()) == []


def test_cli_history_logs_and_status_table(daemon: DaemonProc) -> None:
    cfg = write_config(daemon.workdir, steps=12, step_time=0.01, ckpt_every=4, crash_at=6)
    job = daemon.submit(cfg, "supervision.max_restarts=3")
    daemon.wait_state(job, "completed")
    history = json.loads(daemon.ctl("history", job, "--json").stdout)
    assert [a["reason"] for a in history] == ["crash", "completed"]
    logs = daemon.ctl("logs", job, "--attempt", "1")
    assert "fake trainer attempt 1 from step 0" in logs.stdout
    assert "boom at step 6" in logs.stderr
    followed = daemon.ctl("logs", job, "-f")
    assert "fake trainer attempt 2" in followed.stdout
    table = daemon.ctl("status").stdout
    assert job in table and "completed" in table
    assert daemon.ctl("stop", job, check=False).returncode == 4  # already completed: invalid transition


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_hang_is_detected_stacks_saved_and_the_job_relaunched(daemon: DaemonProc) -> None:
    cfg = write_config(daemon.workdir, steps=30, step_time=0.02, ckpt_every=5, hang_at=12,
                       supervision={"hang_timeout": "2s", "stop_grace": "2s"})
    job = daemon.submit(cfg)
    final = daemon.wait_state(job, "completed", "failed", timeout=60)
    assert final["state"] == "completed"
    first = final["attempts"][0]
    assert first["reason"] == "hang" and "no progress" in first["detail"]
    # detected by the job's 2 s hang timeout (the default would wait minutes): from its last beat, the
    # timeout and the 2 s stop grace, with a loaded box's slack
    beat = read_json(Path(final["job_dir"]) / "attempts" / "1" / "heartbeat.json")
    assert isinstance(beat, dict) and beat["step"] < 12 and first["ended_at"] - beat["time"] < 2 + 2 + 20
    stacks = (Path(final["job_dir"]) / "attempts" / "1" / "stacks.txt").read_text()
    assert "thread" in stacks and "fake_trainer.py" in stacks
    assert final["attempts"][1]["resumed_from"] == best_not_newest(final["job_dir"], 2)


def test_restart_of_a_running_job_relaunches_it_from_best(daemon: DaemonProc) -> None:
    cfg = write_config(daemon.workdir, steps=60, step_time=0.05, ckpt_every=5)
    job = daemon.submit(cfg)
    _attempt_pid(daemon, job, 1)
    wait_for(lambda: daemon.status(job)["global_step"] >= 12, what="progress")
    assert daemon.ctl("restart", job).stdout.strip() == f"{job}: stopping"
    final = daemon.wait_state(job, "completed", "failed")
    first, second = final["attempts"]
    assert first["reason"] == "user_restart"
    # the SIGTERM made the trainer save where it was (the newest); best is a top-k file before it
    assert second["resumed_from"] == best_not_newest(final["job_dir"], 2)
    assert final["state"] == "completed" and final["restarts"] == 1


def test_restart_of_a_failed_job_starts_a_fresh_failure_window(daemon: DaemonProc) -> None:
    # Attempts 1-3 crash: the job gives up after two (max_restarts=1). After the user's restart,
    # attempt 3's crash is the first failure of a fresh window, so attempt 4 runs and completes.
    cfg = write_config(daemon.workdir, steps=30, step_time=0.01, ckpt_every=2, crash_at=5, faults_on=[1, 2, 3],
                       supervision={"max_restarts": 1})
    job = daemon.submit(cfg)
    failed = daemon.wait_state(job, "failed", "completed")
    assert failed["end_reason"] == "max_restarts" and len(failed["attempts"]) == 2
    daemon.ctl("restart", job)
    final = daemon.wait_state(job, "completed", "failed")
    assert final["state"] == "completed", final
    assert [a["reason"] for a in final["attempts"]] == ["crash", "crash", "crash", "completed"]
