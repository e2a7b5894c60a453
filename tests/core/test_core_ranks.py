"""The core with a multi-rank (DDP) attempt, in-process: the spec asks for every rank, the first rank that
failed is the cause, the hang clock reads the slowest rank (fake runner, hand-moved clock, real files)."""

from __future__ import annotations

from pathlib import Path

import yaml

from supervisor.core.submit import SubmitRequest
from supervisor.jobfiles.exitrecord import ExitRecord, write_exit_record
from supervisor.jobfiles.heartbeat import Heartbeat, write_heartbeat
from supervisor.jobfiles.layout import AttemptLayout
from supervisor.jobfiles.monitorfiles import RankEnding
from supervisor.rules.causes import Cause
from supervisor.rules.states import JobState
from tests.core.conftest import Core, MakeCore


def _submit_ddp(core: Core, devices: int = 2, **supervision: object) -> str:
    cfg = {"name": "ddp", "model": {"class_path": "fake.Model"}, "data": {"class_path": "fake.Data"},
           "logger": {"wandb": {"mode": "disabled"}},
           "trainer": {"accelerator": "cpu", "devices": devices, "strategy": "ddp"},
           "supervision": {"backoff": {"initial": "1s", "max": "2s"}, "stop_grace": "5s", **supervision}}
    path = core.work / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    job = core.sup.submit(SubmitRequest(config_path=str(path), cwd=str(core.work)))
    core.turn()
    return job.id


def _layout(core: Core, job_id: str, n: int) -> AttemptLayout:
    spec = core.runner.attempts[(job_id, n)].spec
    assert spec is not None
    spec.attempt_dir.mkdir(parents=True, exist_ok=True)
    return AttemptLayout(spec.attempt_dir)


def test_a_ddp_job_asks_the_runner_for_every_rank_and_a_cpu_job_for_no_gpu(make_core: MakeCore) -> None:
    core = make_core()
    job_id = _submit_ddp(core, devices=3)
    spec = core.runner.attempts[(job_id, 1)].spec
    assert spec is not None
    assert (spec.ranks.world_size, spec.ranks.local_ranks, spec.gpus) == (3, (0, 1, 2), ())
    assert core.job(job_id).gpus_requested == 0


def test_the_first_rank_that_died_is_the_cause_not_the_rank_stopped_after_it(make_core: MakeCore) -> None:
    core = make_core()
    job_id = _submit_ddp(core)
    core.runner.start(job_id, 1)
    core.tick()
    layout = _layout(core, job_id, 1)
    now = core.clock()
    # rank 1 was SIGKILLed; rank 0 then failed in its next collective and wrote that down
    write_exit_record(layout.exit_record_of(0), ExitRecord(status="exception", time=now, pid=11, global_step=40,
                                                           message="RuntimeError: Connection closed by peer"))
    core.runner.end(job_id, 1, ended_at=now, ranks=[
        RankEnding(rank=1, pid=12, exit_code=None, signal="SIGKILL", ended_at=now),
        RankEnding(rank=0, pid=11, exit_code=1, signal=None, ended_at=now + 0.3, stopped_by="SIGTERM")])
    core.turn()
    first, second = core.store.attempts(job_id)
    assert (first.reason, first.detail, first.signal) == (Cause.CRASH, "rank 1 killed by SIGKILL", "SIGKILL")
    assert first.global_step == 40  # rank 0's record
    assert second.n == 2 and core.state(job_id) is JobState.STARTING
    spec = core.runner.attempts[(job_id, 2)].spec
    assert spec is not None and spec.ranks.world_size == 2


def test_a_ddp_attempt_completes_only_when_every_rank_says_so(make_core: MakeCore) -> None:
    core = make_core()
    job_id = _submit_ddp(core)
    core.runner.start(job_id, 1)
    core.tick()
    layout = _layout(core, job_id, 1)
    now = core.clock()
    for rank in (0, 1):
        write_exit_record(layout.exit_record_of(rank), ExitRecord(status="completed", time=now, pid=11 + rank,
                                                                  global_step=60, reason="max_epochs", rank=rank))
    core.runner.end(job_id, 1, ended_at=now, ranks=[
        RankEnding(rank=0, pid=11, exit_code=0, signal=None, ended_at=now),
        RankEnding(rank=1, pid=12, exit_code=0, signal=None, ended_at=now)])
    core.turn()
    (only,) = core.store.attempts(job_id)
    assert only.reason == Cause.COMPLETED and core.state(job_id) is JobState.COMPLETED


def test_the_hang_clock_reads_the_slowest_rank(make_core: MakeCore) -> None:
    core = make_core()
    job_id = _submit_ddp(core, hang_timeout="2m")
    core.runner.start(job_id, 1)
    core.tick()
    layout = _layout(core, job_id, 1)
    start = core.clock()

    def beat(rank: int, time: float, step: int) -> None:
        write_heartbeat(layout.heartbeat_of(rank), Heartbeat(pid=11 + rank, attempt=1, time=time, started_at=start,
                                                             phase="train", step=step, max_step_time=0.1, rank=rank))

    beat(0, start, 10)
    beat(1, start, 10)
    core.clock.advance(100)
    beat(0, core.clock(), 500)  # rank 0 keeps beating (e.g. it is not yet in the collective)...
    core.clock.advance(21)  # ...rank 1 has been silent for 121 s of a 120 s timeout
    core.tick()
    job = core.job(job_id)
    assert (job.state, job.stop_intent) == (JobState.STOPPING, Cause.HANG)
    assert "step 10" in (job.detail or "")  # the slowest rank's step, not rank 0's
    assert core.runner.ops("dump_stacks") == [(job_id, 1)]


def test_a_gpu_count_that_does_not_match_the_devices_is_refused_at_submit(make_core: MakeCore, tmp_path: Path) -> None:
    core = make_core()
    cfg = {"name": "ddp", "model": {"class_path": "fake.Model"}, "data": {"class_path": "fake.Data"},
           "trainer": {"accelerator": "gpu", "devices": 4, "strategy": "ddp"}, "supervision": {"gpus": 2}}
    path = core.work / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        core.sup.submit(SubmitRequest(config_path=str(path), cwd=str(core.work)))
    except Exception as exc:
        assert str(exc) == (f"{path}: supervision.gpus: 2 does not match trainer.devices 4: each rank needs its own "
                            "GPU (leave supervision.gpus unset to take trainer.devices)")
    else:
        raise AssertionError("a mismatched supervision.gpus was accepted")
