"""Standby trainers under the real daemon with the real trainer (digits): takeover, replacement, staleness.

Each job here runs long enough (``step_delay``) for a standby to finish its imports
while attempt 1 trains; the standby's trainer pid, seen in ``status --json``, must be
the pid of attempt 2 when it takes over, and must not be when it may not. A DDP job
(2 gloo ranks on the CPU) gets one standby process per rank, all of which take over.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.core.standby_keeping import AUTO_MIN_AVAILABLE_BYTES, standby_wanted
from supervisor.jobfiles.exitrecord import read_exit_record
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.monitorfiles import read_monitor_exit, read_monitor_start
from supervisor.runners.standby import STANDBY_NICE
from tests.support.chaos_checks import TrainerSampler
from tests.support.harness import REPO, DaemonProc, best_left_by, real_env, standby_processes, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.lightning]

DIGITS = REPO / "configs" / "digits.yaml"
FAULTY = "trainer.examples.faulty.FaultyDigitsClassifier"
EPOCHS = 20
# Attempt 1 runs slowly, long enough for its standby's imports whatever the load; the relaunch at full speed.
BASE = [f"trainer.max_epochs={EPOCHS}", "checkpoint.every_n_train_steps=10", "logger.wandb.mode=disabled",
        "model.init_args.step_delay=0.1", "model.init_args.delay_on_attempt=1"]
STEPS = EPOCHS * 23  # 23 batches an epoch






def _standby(d: DaemonProc, job: str, *, state: str | None = "ready", not_pid: int | None = None,
             timeout: float = 180) -> dict[str, Any]:
    def seen() -> dict[str, Any] | None:
        standby = d.status(job)["standby"]
        if not standby or not standby["pid"] or standby["pid"] == not_pid:
            return None
        return standby if state is None or standby["state"] == state else None

    return wait_for(seen, timeout=timeout, interval=0.2, what=f"a standby ({state or 'any state'})")


def _niceness(pid: int) -> set[int]:
    """The niceness of every thread of ``pid`` (it is per thread on Linux)."""
    values = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        values.add(int(stat.rsplit(")", 1)[1].split()[16]))  # field 19, counted after "(comm)"
    return values


def _kill_and_wait(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    try:
        psutil.Process(pid).wait(timeout=30)
    except psutil.NoSuchProcess:
        pass


def test_after_a_sigkill_the_standby_takes_over_from_best_and_a_dead_standby_is_replaced(
        real_daemon: DaemonProc) -> None:
    d = real_daemon
    job = d.submit(DIGITS, *BASE, f"model.class_path={FAULTY}", "supervision.standby=on")
    pid1 = d.live_pid(job, 1)
    first = _standby(d, job)
    assert first["pid"] != pid1 and first["rss_mb"] > 50  # torch and Lightning are in it
    zygote = psutil.Process(first["pid"]).parent().parent()  # forked: the job's zygote imported them, once
    assert zygote.cmdline()[1:3] == ["-m", "trainer.zygote"]
    # Background work while it waits (where the daemon can undo it: lowering a niceness needs root).
    base = psutil.Process(first["pid"]).parent().nice()  # the monitor's, as a cold attempt runs at
    assert _niceness(first["pid"]) == {min(19, base + STANDBY_NICE) if os.geteuid() == 0 else base}
    _kill_and_wait(first["pid"])
    second = _standby(d, job, not_pid=first["pid"])
    assert psutil.Process(second["pid"]).parent().parent().pid == zygote.pid
    os.kill(pid1, signal.SIGKILL)
    assert d.live_pid(job, 2) == second["pid"]
    assert _niceness(second["pid"]) == {psutil.Process(second["pid"]).parent().nice()}  # the monitor's, promoted
    final = d.wait_state(job, "completed", "failed", timeout=300)
    assert final["state"] == "completed" and [a["reason"] for a in final["attempts"]] == ["crash", "completed"]
    best = best_left_by(JobLayout(Path(final["job_dir"])).manifest, 1)  # the best when the kill came
    assert best is not None and final["attempts"][1]["resumed_from"] == best
    assert final["global_step"] == STEPS  # continued from the checkpoint's step, as a cold restart does
    assert final["standby"] is None
    # The last standby is killed and removed as the job ends (just after the ending is committed).
    wait_for(lambda: not (Path(final["job_dir"]) / "attempts" / "3").exists(), timeout=30,
             what="the last standby's attempt dir removed")
    wait_for(lambda: not zygote.is_running(), timeout=30, what="the zygote gone with its job")


def test_attempt_1_is_a_standby_started_beside_the_submit_check_and_a_refused_submit_leaves_nothing(
        real_daemon: DaemonProc) -> None:
    d = real_daemon
    job = d.submit(DIGITS, *BASE, f"model.class_path={FAULTY}", "supervision.standby=on", "trainer.max_epochs=2")
    pid1 = d.live_pid(job, 1)
    # No standby is prepared for attempt 1 once a job runs (only for attempt n + 1, once n steps):
    # this one was started while submit's import check ran, and promoted at the launch.
    assert "--standby" in psutil.Process(pid1).cmdline()
    final = d.wait_state(job, "completed", "failed", timeout=300)
    assert (final["state"], len(final["attempts"]), final["global_step"]) == ("completed", 1, 2 * 23)

    # The import check fails (no such class) while attempt 1's standby imports beside it: nothing is left.
    bad = d.ctl("submit", str(DIGITS), *BASE, "supervision.standby=on",
                "model.class_path=trainer.examples.digits.NoSuchModel", check=False)
    assert bad.returncode != 0 and "NoSuchModel" in bad.stderr and "Traceback" not in bad.stderr
    assert [j["id"] for j in d.client().call("list")] == [job]
    assert sorted(p.name for p in (d.state_dir / "jobs").iterdir()) == [job]
    wait_for(lambda: standby_processes(d.state_dir) == [], timeout=30, what="no standby left")


def test_after_an_exception_the_standby_takes_over(real_daemon: DaemonProc) -> None:
    d = real_daemon
    job = d.submit(DIGITS, *BASE, "model.class_path=trainer.examples.faulty.CrashingDigitsClassifier",
                   "model.init_args.crash_at_step=200", "supervision.standby=on")
    d.live_pid(job, 1)
    standby = _standby(d, job, state=None)
    final = d.wait_state(job, "completed", "failed", timeout=400)
    assert final["state"] == "completed" and [a["reason"] for a in final["attempts"]] == ["crash", "completed"]
    assert final["attempts"][1]["pid"] == standby["pid"]
    assert final["attempts"][1]["resumed_from"] is not None
    assert final["global_step"] == STEPS


def test_a_standby_whose_user_code_changed_is_not_used(real_daemon: DaemonProc, tmp_path: Path) -> None:
    d = real_daemon
    work = tmp_path / "work"
    work.mkdir()
    module = work / "mydigits.py"
    module.write_text("from trainer.examples.faulty import FaultyDigitsClassifier\n\n\n"
                      "class MyDigits(FaultyDigitsClassifier):\n    pass\n")
    job = d.submit(DIGITS, *BASE, f"workdir={work}", "model.class_path=mydigits.MyDigits", "supervision.standby=on")
    pid1 = d.live_pid(job, 1)
    standby = _standby(d, job)
    later = time.time() + 10
    os.utime(module, (later, later))  # the user edited their model while attempt 1 ran
    os.kill(pid1, signal.SIGKILL)
    pid2 = d.live_pid(job, 2)
    assert pid2 != standby["pid"]
    wait_for(lambda: not psutil.pid_exists(standby["pid"]), timeout=30, what="the stale standby killed")
    final = d.wait_state(job, "completed", "failed", timeout=400)
    assert final["state"] == "completed" and final["global_step"] == STEPS


def test_a_daemon_restart_kills_the_old_standby_and_prepares_a_fresh_one(real_daemon: DaemonProc) -> None:
    d = real_daemon
    job = d.submit(DIGITS, *BASE, f"model.class_path={FAULTY}", "supervision.standby=on")
    pid1 = d.live_pid(job, 1)
    old = _standby(d, job)
    d.kill(signal.SIGKILL)
    d.start("hang.min_timeout=4", "hang.startup_allowance=120")
    wait_for(lambda: not psutil.pid_exists(old["pid"]), timeout=60, what="the old daemon's standby killed")
    fresh = _standby(d, job, not_pid=old["pid"])
    assert d.status(job)["attempts"][0]["pid"] == pid1  # the running attempt itself was adopted, not touched
    d.ctl("stop", job)
    d.wait_state(job, "stopped", timeout=120)
    wait_for(lambda: not psutil.pid_exists(fresh["pid"]), timeout=30, what="the standby killed with its job")


def _gpu(index: int) -> dict[str, Any]:
    return {"index": index, "uuid": f"GPU-fake-{index}", "name": "Fake H100", "memory_total_mib": 81559,
            "memory_used_mib": 0, "temperature_c": 40, "ecc_uncorrected": 0, "retired_pages_pending": False,
            "lost": False, "xid": []}


def test_a_gpu_fault_moves_the_job_and_the_standby_takes_the_new_gpu(tmp_path: Path) -> None:
    """GPUs come with the handover: the standby waits with none, and fits on the GPU the relaunch got.

    The simulated NVML (two GPUs) drives placement and the fault; torch is the CPU build, so the
    GPU the trainer was given is read from its own log line (it prints its CUDA_VISIBLE_DEVICES).
    """
    nvml = tmp_path / "nvml.json"
    nvml.write_text(json.dumps({"gpus": [_gpu(0), _gpu(1)]}))
    state = tmp_path / "state"
    d = DaemonProc(state, REPO, real_env(state, ML_SUPERVISOR_NVML=f"fake:{nvml}"))
    d.start("hang.min_timeout=4", "hang.startup_allowance=120", "gpu.poll_interval=0.2")
    try:
        job = d.submit(DIGITS, *BASE, f"model.class_path={FAULTY}", "supervision.standby=on", "supervision.gpus=1")
        d.live_pid(job, 1)
        assert d.status(job)["attempts"][0]["gpus"] == [0]
        standby = _standby(d, job)
        environ = psutil.Process(standby["pid"]).environ()
        assert environ["CUDA_VISIBLE_DEVICES"] == ""  # no GPU until the handover names one
        assert environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
        data = json.loads(nvml.read_text())
        data["gpus"][0]["xid"] = [79]  # GPU 0 falls off the bus: quarantined, the job moves to GPU 1
        nvml.write_text(json.dumps(data))
        final = d.wait_state(job, "completed", "failed", timeout=400)
        first, second = final["attempts"][:2]
        assert first["reason"] == "gpu_fault" and second["gpus"] == [1]
        assert second["pid"] == standby["pid"]  # promoted, not a cold start
        logs = d.ctl("logs", job, "--attempt", "2")
        assert "attempt 2: CUDA_VISIBLE_DEVICES=1" in logs.stdout + logs.stderr  # the trainer's stderr
        assert final["state"] == "completed" and final["global_step"] == STEPS
    finally:
        if d.proc is not None:
            d.kill()
        d.kill_leftovers()


def test_auto_wants_a_standby_only_with_the_memory_for_it_and_our_trainer() -> None:
    assert standby_wanted("auto", AUTO_MIN_AVAILABLE_BYTES, "trainer")
    assert not standby_wanted("auto", AUTO_MIN_AVAILABLE_BYTES - 1, "trainer")
    assert not standby_wanted("auto", AUTO_MIN_AVAILABLE_BYTES, "fake_trainer")
    assert standby_wanted("on", 0, "fake_trainer")
    assert not standby_wanted("off", AUTO_MIN_AVAILABLE_BYTES * 10, "trainer")


DDP = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu", "data.init_args.batch_size=32",
       "logger.wandb.mode=disabled", "checkpoint.every_n_train_steps=10"]  # 2 ranks x 32: the global batch of 64


def test_a_ddp_jobs_standby_takes_over_every_rank_after_one_rank_is_killed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    d = DaemonProc(state, REPO, real_env(state, OMP_NUM_THREADS="1"))
    d.start("hang.min_timeout=4", "hang.startup_allowance=240")
    sampler = TrainerSampler(state, interval=0.1)
    try:
        # Attempt 1 blocks in training_step at step 40 on both ranks (no CPU spent while the standby imports),
        # after the validation of step 23 (best) and the saves of steps 10, 20, 30.
        job = d.submit(DIGITS, *DDP, f"model.class_path={FAULTY}", "model.init_args.hang_at_step=40",
                       "trainer.max_epochs=3", "supervision.standby=on", "supervision.hang_timeout=1h")
        standby = _standby(d, job, timeout=400)  # ready: both standby ranks imported and built
        jobdir = JobLayout(Path(d.status(job)["job_dir"]))
        waiting = read_monitor_start(jobdir.attempt(2).monitor_start)
        running = read_monitor_start(jobdir.attempt(1).monitor_start)
        assert waiting is not None and running is not None and waiting.pids()[0] == standby["pid"]
        wait_for(lambda: any(c["step"] >= 30 for c in d.status(job)["checkpoints"]), timeout=240, interval=0.2,
                 what="attempt 1's save of step 30")
        sampler.start()
        os.kill(running.pids()[1], signal.SIGKILL)
        final = d.wait_state(job, "completed", "failed", timeout=400)
    finally:
        sampler.stop()
        if d.proc is not None:
            d.kill()
        d.kill_leftovers()
    assert final["state"] == "completed", final["detail"]
    assert [a["reason"] for a in final["attempts"]] == ["crash", "completed"]
    assert final["attempts"][0]["detail"] == "rank 1 killed by SIGKILL"
    # every rank of attempt 2 is a standby process: the same pids, recorded by its monitor as a cold start's are
    promoted = read_monitor_start(jobdir.attempt(2).monitor_start)
    assert promoted is not None and promoted.pids() == waiting.pids() and final["attempts"][1]["pid"] == standby["pid"]
    # from the checkpoint a cold restart would take, to the same final step on both ranks
    best = best_left_by(JobLayout(Path(final["job_dir"])).manifest, 1)  # the best when the kill came
    assert best is not None and final["attempts"][1]["resumed_from"] == best
    assert final["global_step"] == 3 * 23
    for rank in (0, 1):
        record = read_exit_record(jobdir.attempt(2).exit_record_of(rank))
        assert record is not None and (record.status, record.global_step) == ("completed", 3 * 23)
    # no rank of attempt 2 fitted while a process of attempt 1 lived
    ended = read_monitor_exit(jobdir.attempt(1).monitor_exit)
    assert ended is not None
    for rank in (0, 1):
        beat = read_heartbeat(jobdir.attempt(2).heartbeat_of(rank))
        assert beat is not None and beat.started_at >= ended.ended_at
    assert sampler.samples > 10 and sampler.violations_for(job) == []
