"""The soak's invariant checks can fail: each is shown a violation made on purpose."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from pathlib import Path

from supervisor.jobfiles.manifest import CheckpointEntry, abandon_after, record_save
from tests.support.chaos_checks import TrainerSampler, check_final, check_no_leftovers, check_resume


def _sleeper(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args])


def test_the_sampler_sees_two_trainers_of_one_job_and_not_a_monitor(tmp_path: Path) -> None:
    state = tmp_path / "state"
    attempt = str(state / "jobs" / "j1" / "attempts")
    procs = [_sleeper("--attempt-dir", f"{attempt}/1"), _sleeper("--attempt-dir", f"{attempt}/2"),
             _sleeper("-m", "supervisor.attempt_monitor", "--attempt-dir", f"{attempt}/3")]
    try:
        sampler = TrainerSampler(state)
        time.sleep(0.3)  # let the command lines appear
        sampler.sample_once()
        found = sampler.violations_for("j1")
        assert len(found) == 1 and str(procs[0].pid) in found[0] and str(procs[1].pid) in found[0]
        assert str(procs[2].pid) not in found[0]
        procs[1].kill()
        procs[1].wait()
        sampler.doubles.clear()
        sampler.sample_once()
        assert sampler.violations_for("j1") == []
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_process_left_behind_is_reported_and_killed(tmp_path: Path) -> None:
    job_dir = tmp_path / "state" / "jobs" / "j1"
    proc = _sleeper("--attempt-dir", f"{job_dir}/attempts/1")
    time.sleep(0.3)
    found = check_no_leftovers(tmp_path / "state", job_dir, grace_s=0.5)
    assert len(found) == 1 and str(proc.pid) in found[0]
    assert proc.wait(timeout=5) != 0


def _save(ckpt: Path, step: int, attempt: int) -> str:
    path = ckpt / f"step={step}.ckpt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"x" * 100)
    record_save(ckpt / "manifest.jsonl", CheckpointEntry(
        path=str(path), step=step, epoch=0, monitor="loss", score=1.0 / step, mode="min",
        size=path.stat().st_size, time=time.time() - 10, attempt=attempt))
    return str(path)


def test_a_resume_from_anything_but_the_policys_verified_choice_is_a_violation(tmp_path: Path) -> None:
    job = tmp_path / "job"
    ckpt = job / "checkpoints"
    ckpt.mkdir(parents=True)
    five, ten, fifteen = (_save(ckpt, s, 1) for s in (5, 10, 15))
    # attempt 2 resumed from step 10 and rewound: step 15 moved to abandoned/2/ (still whole)
    abandon_after(ckpt / "manifest.jsonl", ten, 2)
    assert check_resume(job, 2, ten, "best", {}) != []  # the best, step 15, verified: 10 was wrong
    assert check_resume(job, 2, ten, "best", {fifteen: time.time()}) == []  # 15 was broken: 10 is right
    assert check_resume(job, 2, five, "best", {fifteen: time.time()}) != []
    assert check_resume(job, 2, fifteen, "best", {fifteen: time.time()}) != []


def test_final_checks_count_a_short_step_a_failure_and_an_overrun() -> None:
    ok = {"state": "completed", "end_reason": "finished", "global_step": 60, "budget": {"used": 30.0}}
    assert check_final(ok, 60, None) == []
    assert check_final({**ok, "global_step": 55}, 60, None) != []
    assert check_final({**ok, "state": "failed", "end_reason": "max_restarts"}, 60, None) != []
    assert check_final({**ok, "state": "running"}, 60, None) == ["stuck in running"]
    assert check_final({**ok, "end_reason": "budget"}, 60, 10.0) != []  # 20 s over a 10 s budget
    assert check_final({**ok, "end_reason": "budget"}, 60, 20.0) == []
