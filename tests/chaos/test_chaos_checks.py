"""The soak's invariant checks can fail: each is shown a violation made on purpose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from supervisor.jobfiles.manifest import CheckpointEntry, abandon_after, record_save, record_unusable
from tests.support.chaos_checks import (
    TrainerSampler,
    check_attempt_ended,
    check_final,
    check_gave_up_diverged,
    check_no_leftovers,
    check_not_past_bad_step,
    check_resume,
)


def _sleeper(*args: str, rank: int | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "RANK"}
    if rank is not None:  # as the attempt monitor starts a DDP rank
        env["RANK"] = str(rank)
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args], env=env)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def test_the_sampler_sees_two_trainers_of_one_job_and_not_a_monitor(tmp_path: Path) -> None:
    state = tmp_path / "state"
    attempt = str(state / "jobs" / "j1" / "attempts")
    procs = [_sleeper("--attempt-dir", f"{attempt}/1"), _sleeper("--attempt-dir", f"{attempt}/2"),
             _sleeper("-m", "supervisor.processes.attempt_monitor", "--attempt-dir", f"{attempt}/3")]
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


def test_the_sampler_counts_per_rank_two_ranks_of_one_attempt_are_no_duplicate(tmp_path: Path) -> None:
    state = tmp_path / "state"
    attempts = state / "jobs" / "j1" / "attempts"
    ranks = [_sleeper("--attempt-dir", f"{attempts}/1", rank=r) for r in (0, 1)]
    extra: list[subprocess.Popen[bytes]] = []
    try:
        sampler = TrainerSampler(state)
        time.sleep(0.3)
        sampler.sample_once()
        assert sampler.violations_for("j1") == []  # a 2-rank DDP attempt: one process per rank
        # a second process of rank 1 in the same attempt is a duplicate
        extra.append(_sleeper("--attempt-dir", f"{attempts}/1", rank=1))
        time.sleep(0.3)
        sampler.sample_once()
        found = sampler.violations_for("j1")
        assert len(found) == 1 and str(extra[0].pid) in found[0] and "attempt 1 rank 1" in found[0]
        _stop(extra)
        sampler.doubles.clear()
        # rank 0 of attempt 1 outlives its killed rank 1 while attempt 2's rank 1 starts: two attempts alive
        ranks[1].kill()
        ranks[1].wait()
        extra = [_sleeper("--attempt-dir", f"{attempts}/2", rank=1)]
        time.sleep(0.3)
        sampler.sample_once()
        found = sampler.violations_for("j1")
        assert len(found) == 1 and str(ranks[0].pid) in found[0] and str(extra[0].pid) in found[0]
    finally:
        _stop(ranks + extra)


def test_a_waiting_standby_is_no_trainer_until_its_handover(tmp_path: Path) -> None:
    state = tmp_path / "state"
    attempts = state / "jobs" / "j1" / "attempts"
    (attempts / "2").mkdir(parents=True)
    running = [_sleeper("--attempt-dir", f"{attempts}/1", rank=r) for r in (0, 1)]
    standby = [_sleeper("--attempt-dir", f"{attempts}/2", "--standby", rank=r) for r in (0, 1)]
    try:
        sampler = TrainerSampler(state)
        time.sleep(0.3)
        sampler.sample_once()
        assert sampler.violations_for("j1") == []  # attempt 2's standby ranks import and wait: no trainers
        (attempts / "2" / "handover.json").write_text("{}")  # handed over while attempt 1 still lives
        time.sleep(0.05)
        sampler.sample_once()
        found = sampler.violations_for("j1")
        assert len(found) == 1 and all(str(p.pid) in found[0] for p in running + standby)
    finally:
        _stop(running + standby)


def test_a_rank_that_outlives_its_attempt_is_reported_and_killed_not_the_next_attempts(tmp_path: Path) -> None:
    attempts = tmp_path / "state" / "jobs" / "j1" / "attempts"
    survivor = _sleeper("--attempt-dir", f"{attempts}/1", rank=0)
    # attempt 10 and attempt 2's ranks are not attempt 1's (no prefix match)
    others = [_sleeper("--attempt-dir", f"{attempts}/10", rank=0), _sleeper("--attempt-dir", f"{attempts}/2")]
    try:
        time.sleep(0.3)
        found = check_attempt_ended(attempts / "1", grace_s=0.5)
        assert len(found) == 1 and str(survivor.pid) in found[0]
        assert survivor.wait(timeout=5) != 0
        assert all(p.poll() is None for p in others)
        assert check_attempt_ended(attempts / "1", grace_s=0.2) == []
    finally:
        _stop([survivor, *others])


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
    broke = time.time()
    launched = broke + 1  # attempt 2 launched after the soak broke step 15
    assert check_resume(job, 2, ten, "best", {}, launched) != []  # the best, step 15, verified: 10 was wrong
    assert check_resume(job, 2, ten, "best", {fifteen: [broke]}, launched) == []  # 15 was broken: 10 is right
    assert check_resume(job, 2, five, "best", {fifteen: [broke]}, launched) != []
    assert check_resume(job, 2, fifteen, "best", {fifteen: [broke]}, launched) != []
    # Broken while attempt 2 ran (it resumed from the whole file; only attempt 3 could see it broken):
    assert check_resume(job, 2, fifteen, "best", {fifteen: [broke]}, broke - 1) == []
    # Broken twice, once before attempt 2's launch: that one counts.
    assert check_resume(job, 2, fifteen, "best", {fifteen: [broke - 2, broke]}, broke - 1) != []


def test_final_checks_count_a_short_step_a_failure_and_an_overrun() -> None:
    ok = {"state": "completed", "end_reason": "finished", "global_step": 60, "budget": {"used": 30.0}}
    assert check_final(ok, 60, None) == []
    assert check_final({**ok, "global_step": 55}, 60, None) != []
    assert check_final({**ok, "state": "failed", "end_reason": "max_restarts"}, 60, None) != []
    assert check_final({**ok, "state": "running"}, 60, None) == ["stuck in running"]
    assert check_final({**ok, "end_reason": "budget"}, 60, 10.0) != []  # 20 s over a 10 s budget
    assert check_final({**ok, "end_reason": "budget"}, 60, 20.0) == []


def _diverged(job: Path, attempt: int, bad_step: int) -> None:
    """Attempt ``attempt`` diverged at ``bad_step``, as the (fake or real) trainer records it."""
    (job / "attempts" / str(attempt)).mkdir(parents=True, exist_ok=True)
    (job / "attempts" / str(attempt) / "exit.json").write_text(json.dumps(
        {"status": "diverged", "time": time.time(), "pid": 1, "global_step": bad_step + 3,
         "divergence": {"step": bad_step, "check": "loss_spike", "value": "nan", "rank": 0}}))


def test_a_resume_at_or_past_a_bad_step_is_a_violation(tmp_path: Path) -> None:
    job = tmp_path / "job"
    ckpt = job / "checkpoints"
    ckpt.mkdir(parents=True)
    five, ten, fifteen = (_save(ckpt, s, 1) for s in (5, 10, 15))
    # attempt 1's loss went bad at step 13 (a spike seen at 16): step 15 was saved with bad weights
    record_unusable(ckpt / "manifest.jsonl", 13, 1, "diverged at step 13: loss spike")
    _diverged(job, 1, 13)
    assert check_not_past_bad_step(job, 2, ten) == []
    assert check_not_past_bad_step(job, 2, None) == []
    found = check_not_past_bad_step(job, 2, fifteen)
    assert len(found) == 2 and "unusable" in found[0] and "diverged at step 13" in found[1]
    # the rollback names the newest before the bad step, whatever resume_from says (best: step 5 scores 1/5)
    assert check_resume(job, 2, ten, "best", {}, time.time()) == []
    assert check_resume(job, 2, five, "best", {}, time.time()) != []
    # attempt 2 resumed from 10 and saved step 15 again past the bad step (a healthy timeline): live, usable
    fifteen = _save(ckpt, 15, 2)
    assert check_not_past_bad_step(job, 3, fifteen) == []
    # only the exit record says so (no unusable line): still at the bad step of the attempt before
    _diverged(job, 2, 15)
    assert check_not_past_bad_step(job, 3, fifteen) != []


def test_a_persistent_divergence_must_give_up_at_max_rollbacks() -> None:
    attempts = [{"n": n, "reason": "diverged"} for n in (1, 2, 3)]
    gave_up = {"state": "failed", "end_reason": "diverged", "attempts": attempts}
    assert check_gave_up_diverged(gave_up, 2) == []
    assert check_gave_up_diverged({**gave_up, "attempts": [*attempts, {"n": 4, "reason": "diverged"}]}, 2) != []
    assert check_gave_up_diverged({**gave_up, "state": "completed", "end_reason": "finished"}, 2) != []
    # a daemon kill between two divergences adds an attempt, not a divergence
    killed = [*attempts[:2], {"n": 3, "reason": "signal"}, {"n": 4, "reason": "diverged"}]
    assert check_gave_up_diverged({**gave_up, "attempts": killed}, 2) == []
