"""DDP under the real daemon: the digits example on CPU with gloo, 2 ranks started by the local runner.

Every attempt is one attempt monitor with ``--nproc-per-node 2`` and two real ``python -m trainer``
processes; the daemon reads every rank's files. Slow (two Lightning imports per attempt on a loaded
box), so few: a completed job against a 1-rank job of the same global batch; SIGKILL of rank 1 and of
rank 0 mid-fit; a rank hanging in training_step; ``supervisorctl stop`` during training.
"""

from __future__ import annotations

import os
import signal
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.exitrecord import read_exit_record
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import AttemptLayout, JobLayout
from supervisor.jobfiles.monitorfiles import MonitorStart, read_monitor_exit, read_monitor_start
from tests.support.harness import REPO, DaemonProc, real_env, wait_for
from tests.support.resume_oracle import resume_for

pytestmark = [pytest.mark.e2e, pytest.mark.lightning]

DIGITS = REPO / "configs" / "digits.yaml"
FAULTY = "model.class_path=trainer.examples.faulty.FaultyDigitsClassifier"
# 2 ranks x 32 = the example's global batch of 64; cold relaunches (a standby's two ranks would import beside
# the attempt's two: tests/e2e/test_standby.py has the DDP standby's takeover)
DDP = ["trainer.devices=2", "trainer.strategy=ddp", "logger.wandb.mode=disabled", "checkpoint.every_n_train_steps=10",
       "data.init_args.batch_size=32", "supervision.standby=off"]
START_TIMEOUT = 240.0  # two ranks importing Lightning at once on a loaded 2-core box


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    state = tmp_path / "state"
    d = DaemonProc(state, REPO, real_env(state, OMP_NUM_THREADS="1"))
    d.start("hang.min_timeout=4", "hang.startup_allowance=240")
    yield d
    if d.proc is not None:
        d.kill()
    d.kill_leftovers()


def _layout(d: DaemonProc, job: str, n: int) -> AttemptLayout:
    return JobLayout(Path(d.status(job)["job_dir"])).attempt(n)


def _ranks_started(d: DaemonProc, job: str, n: int) -> MonitorStart:
    """Attempt ``n``'s monitor.json, once both ranks are known to the daemon."""
    def started() -> MonitorStart | None:
        attempts = d.status(job)["attempts"]
        if len(attempts) < n or attempts[n - 1]["pid"] is None:
            return None
        return read_monitor_start(_layout(d, job, n).monitor_start)

    start = wait_for(started, timeout=START_TIMEOUT, interval=0.1, what=f"attempt {n} started")
    assert start.world_size == 2 and sorted(start.pids()) == [0, 1]
    return start


def _trained(d: DaemonProc, job: str, n: int, step: int) -> None:
    """Attempt ``n`` saved a checkpoint and both ranks are past ``step``."""
    layout = _layout(d, job, n)
    manifest = JobLayout(layout.dir.parents[1]).manifest

    def past() -> bool:
        saved = any(e.get("event") == "save" and e.get("attempt") == n for e in read_json_lines(manifest))
        return saved and _both_past(layout, step)

    wait_for(past, timeout=START_TIMEOUT, interval=0.1, what=f"attempt {n} past step {step} with a checkpoint")


def _both_past(layout: AttemptLayout, step: int) -> bool:
    return all((b := read_heartbeat(layout.heartbeat_of(r))) is not None and b.step >= step for r in (0, 1))


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.Error:
            continue
    return alive


def _complete_zip(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def test_two_ranks_complete_with_the_final_step_of_one_rank(daemon: DaemonProc) -> None:
    d = daemon
    two = d.submit(DIGITS, *DDP, "trainer.max_epochs=2")
    one = d.submit(DIGITS, "trainer.max_epochs=2", "logger.wandb.mode=disabled", "checkpoint.every_n_train_steps=10")
    done_two = d.wait_state(two, "completed", "failed", timeout=400)
    done_one = d.wait_state(one, "completed", "failed", timeout=400)
    assert done_two["state"] == done_one["state"] == "completed", (done_two["detail"], done_one["detail"])
    assert (done_two["world_size"], done_one["world_size"]) == (2, 1)
    assert len(done_two["attempts"]) == 1 and done_two["attempts"][0]["reason"] == "completed"
    assert done_two["global_step"] == done_one["global_step"] > 0
    layout = _layout(d, two, 1)
    records = [read_exit_record(layout.exit_record_of(r)) for r in (0, 1)]
    assert [(r.status, r.rank, r.global_step) for r in records if r] == [
        ("completed", 0, done_one["global_step"]), ("completed", 1, done_one["global_step"])]
    assert layout.stdout_of(1).exists() and layout.heartbeat_of(1).exists()


@pytest.mark.parametrize("victim", [1, 0])
def test_sigkill_of_one_rank_ends_the_attempt_at_once_and_both_ranks_resume_from_best(daemon: DaemonProc,
                                                                                      victim: int) -> None:
    d = daemon
    job = d.submit(DIGITS, *DDP, FAULTY, "model.init_args.step_delay=0.03", "trainer.max_epochs=3")
    start = _ranks_started(d, job, 1)
    _trained(d, job, 1, 15)
    killed_at = time.time()
    os.kill(start.pids()[victim], signal.SIGKILL)

    def collected() -> dict[str, Any] | None:
        status = d.status(job)
        return status if status["attempts"][0]["ended_at"] is not None else None

    status = wait_for(collected, timeout=30, what="attempt 1 collected")
    first = status["attempts"][0]
    assert (first["reason"], first["detail"], first["signal"]) == ("crash", f"rank {victim} killed by SIGKILL",
                                                                    "SIGKILL")
    end = read_monitor_exit(_layout(d, job, 1).monitor_exit)
    assert end is not None and end.first_rank == victim
    # The attempt ends within a second of the rank's death (as the monitor saw it: the kernel's teardown
    # of a killed torch process, before its parent can see it gone, is not ours to speed up).
    died = next(e for e in end.ranks if e.rank == victim)
    print(f"rank {victim} killed: seen dead after {died.ended_at - killed_at:.2f}s, attempt over "
          f"{end.ended_at - died.ended_at:.2f}s later; survivor: {[e for e in end.ranks if e.rank != victim]}")
    # Ended by the monitor (the survivor's SIGTERM grace is 0.8 s): left alone, the survivor would sit in
    # gloo's all-reduce for its 30-minute timeout. The bound only tells those apart (a loaded box takes
    # seconds); how fast it is on a quiet box is bench/ddp_restart.py's figure.
    assert end.ended_at - died.ended_at < 60, f"the other rank lived {end.ended_at - died.ended_at:.2f}s longer"
    survivor = 1 - victim
    record = read_exit_record(_layout(d, job, 1).exit_record_of(survivor))
    assert record is not None and record.status in ("exception", "signal")  # the survivor had its say
    # Never two generations of ranks: attempt 2 starts after every process of attempt 1 is gone.
    second = _ranks_started(d, job, 2)
    assert second.started_at >= end.ended_at
    assert not _alive(list(start.pids().values()))

    final = d.wait_state(job, "completed", "failed", timeout=400)
    assert final["state"] == "completed", final["detail"]
    assert [a["reason"] for a in final["attempts"]] == ["crash", "completed"]
    # the best checkpoint attempt 1 left, by the tests' own rule over its manifest lines (not the daemon's)
    assert final["attempts"][1]["resumed_from"] == resume_for(JobLayout(Path(final["job_dir"])).manifest, 2)
    assert final["global_step"] == 3 * 23  # 23 steps an epoch at a global batch of 64
    for rank in (0, 1):
        layout = _layout(d, job, 2)
        last = read_exit_record(layout.exit_record_of(rank))
        assert last is not None and last.status == "completed"


def test_a_rank_hanging_in_training_step_is_a_hang_with_both_stacks_and_a_relaunch(daemon: DaemonProc) -> None:
    d = daemon
    job = d.submit(DIGITS, *DDP, FAULTY, "trainer.max_epochs=2", "model.init_args.hang_at_step=20",
                   "model.init_args.fault_on_rank=1", "model.init_args.fault_on_attempt=1")
    final = d.wait_state(job, "completed", "failed", timeout=500)
    assert final["state"] == "completed", final["detail"]
    first = final["attempts"][0]
    assert first["reason"] == "hang" and "no progress" in first["detail"]
    layout = _layout(d, job, 1)
    stuck = layout.stacks_of(1).read_text(errors="replace")
    assert "training_step" in stuck and "faulty.py" in stuck  # rank 1 is stuck in its step...
    waiting = layout.stacks_of(0).read_text(errors="replace")
    assert "pytorch_lightning" in waiting  # ...rank 0 waits for it inside Lightning (the all-reduce)
    saved = next(e for e in d.client().call("events", job=job) if e["kind"] == "stacks")
    assert "stacks.txt" in saved["message"] and "stacks.rank1.txt" in saved["message"]
    assert final["attempts"][1]["resumed_from"] == resume_for(JobLayout(Path(final["job_dir"])).manifest, 2)


def test_stop_during_ddp_training_leaves_one_complete_checkpoint_and_records_the_signal(daemon: DaemonProc) -> None:
    d = daemon
    job = d.submit(DIGITS, *DDP, FAULTY, "model.init_args.step_delay=0.03", "trainer.max_epochs=100",
                   "checkpoint.every_n_train_steps=1000")
    start = _ranks_started(d, job, 1)
    layout = _layout(d, job, 1)
    wait_for(lambda: _both_past(layout, 12), timeout=START_TIMEOUT, interval=0.1, what="both ranks past step 12")
    d.ctl("stop", job)
    final = d.wait_state(job, "stopped", "failed", "completed", timeout=120)
    assert final["state"] == "stopped", final["detail"]
    records = [read_exit_record(layout.exit_record_of(r)) for r in (0, 1)]
    assert all(r is not None and (r.status, r.signal) == ("signal", "SIGTERM") for r in records), records
    assert records[0] is not None and records[1] is not None
    assert records[0].global_step == records[1].global_step  # both stopped at the same batch boundary
    saves = [e for e in read_json_lines(JobLayout(Path(final["job_dir"])).manifest) if e["event"] == "save"]
    assert [e["kind"] for e in saves] == ["signal"] and saves[0]["step"] == records[0].global_step
    assert _complete_zip(saves[0]["path"])
    assert not any(e["kind"] == "sigkill" for e in d.client().call("events", job=job))  # no hang, no kill
    assert not _alive(list(start.pids().values()))



def test_a_nan_on_rank_1_only_rolls_the_whole_job_back(daemon: DaemonProc) -> None:
    d = daemon
    job = d.submit(DIGITS, *DDP, FAULTY, "trainer.max_epochs=3", "model.init_args.nan_at_step=30",
                   "model.init_args.fault_on_rank=1")
    final = d.wait_state(job, "completed", "failed", timeout=2 * START_TIMEOUT + 120)
    assert final["state"] == "completed", final["detail"]
    first = final["attempts"][0]
    assert first["reason"] == "diverged", first
    # rank 1's own record names the cause; rank 0 stopped at the same step because the collective said so
    assert first["detail"] == "diverged at step 30: non-finite loss (nan) on rank 1"
    records = {r: read_exit_record(_layout(d, job, 1).exit_record_of(r)) for r in (0, 1)}
    assert all(rec is not None and rec.status == "diverged" and rec.diverged_at == 30 for rec in records.values())
    lines = read_json_lines(JobLayout(Path(final["job_dir"])).manifest)
    saves = [e for e in lines if e.get("event") == "save" and e["attempt"] == 1]
    # nothing saved after the bad step (a save AT it holds the weights whose loss was NaN: marked unusable)
    assert saves and max(e["step"] for e in saves) <= 30
    assert [e["from_step"] for e in lines if e.get("event") == "unusable"] == [30]
    resumed = [e["step"] for e in saves if e["path"] == final["attempts"][1]["resumed_from"]][-1]
    assert resumed < 30 and final["divergence"]["first_bad_steps"] == [30]


def test_a_slow_rank_is_named_a_straggler_and_an_even_job_of_the_same_shape_is_not(daemon: DaemonProc) -> None:
    d = daemon
    shape = [*DDP, FAULTY, "trainer.max_epochs=12", "model.init_args.step_delay=0.08",
             "supervision.stragglers.window=3"]
    slow = d.submit(DIGITS, *shape, "model.init_args.delay_on_rank=1")

    def named() -> list[dict[str, Any]]:
        return [e for e in d.client().call("events", job=slow) if e["kind"] == "straggler"]

    events = wait_for(named, timeout=START_TIMEOUT + 120, interval=0.5, what="a straggler event")
    assert len(events) == 1 and events[0]["message"].startswith("straggler: rank 1 ")
    assert events[0]["data"]["rank"] == 1 and events[0]["data"]["relative"] < 0.7
    ranks = d.status(slow)["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[1]["step_ms"] > ranks[0]["step_ms"]
    d.ctl("stop", slow)
    d.wait_state(slow, "stopped", timeout=120)
    even = d.submit(DIGITS, *shape)  # both ranks at the same pace, as long
    final = d.wait_state(even, "completed", "failed", timeout=START_TIMEOUT + 180)
    assert final["state"] == "completed"
    assert not [e for e in d.client().call("events", job=even) if e["kind"] in ("straggler", "slow")]
