"""Elastic DDP in the core, in-process: NVML simulated (the one simulation the project accepts), the fake
runner. Xid 79 on GPU 1 -> the relaunch runs 1 rank accumulating 2 on GPU 0 (an event, an alert); the
quarantine cleared -> a checkpoint is asked for, the attempt stops as ``resize`` once it is saved, and the
relaunch runs 2 ranks again, never charged to max_restarts. And the submit-time refusals."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest
import yaml

from supervisor.config import parse_job_config
from supervisor.core.elastic_shape import check_elastic_job
from supervisor.core.submit import SubmitRequest
from supervisor.errors import ConfigError
from supervisor.gpu.types import XidEvent
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import CheckpointEntry, record_save
from supervisor.processes.control import ProcessHandle
from supervisor.rules.causes import Cause, EventKind
from supervisor.rules.states import JobState
from supervisor.runners.standby import StandbyLocalRunner
from supervisor.runners.standby_process import Standby
from tests.core.conftest import Core, MakeCore
from tests.support.harness import wait_for


@pytest.fixture
def gpu_core(make_core: MakeCore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Core:
    nvml = tmp_path / "nvml.json"
    nvml.write_text(json.dumps({"gpus": [{"index": 0}, {"index": 1}]}))
    monkeypatch.setenv("ML_SUPERVISOR_NVML", f"fake:{nvml}")
    core = make_core()
    assert core.sup.gpus is not None
    wait_for(lambda: len(core.sup.gpus.allocatable()) == 2, timeout=10, what="the GPUs read once")  # type: ignore
    return core


def _config(**elastic: object) -> dict[str, object]:
    return {"name": "ddp", "model": {"class_path": "fake.Model"}, "data": {"class_path": "fake.Data"},
            "logger": {"wandb": {"mode": "disabled"}},
            "trainer": {"accelerator": "gpu", "devices": 2, "strategy": "ddp"},
            "supervision": {"stop_grace": "5s", "max_restarts": 1, "elastic": elastic or {"min_devices": 1}}}


def _shape(core: Core, job_id: str, n: int) -> tuple[tuple[int, ...], int, str]:
    spec = core.runner.attempts[(job_id, n)].spec
    assert spec is not None
    command = list(spec.command)
    flags = command[command.index("--devices"):command.index("--devices") + 4]
    assert flags[2] == "--accumulate-grad-batches"
    assert int(flags[1]) == spec.ranks.world_size
    return spec.gpus, spec.ranks.world_size, flags[3]


def _save(core: Core, job_id: str, n: int, step: int) -> None:
    manifest = JobLayout(Path(core.job(job_id).job_dir)).manifest
    record_save(manifest, CheckpointEntry(path=f"/nowhere/step{step}.ckpt", step=step, epoch=0, monitor=None,
                                          score=None, mode="min", size=1, time=time.time(), attempt=n))


def test_lose_a_gpu_shrink_with_the_same_global_batch_then_grow_back(gpu_core: Core) -> None:
    core = gpu_core
    path = core.work / "ddp.yaml"
    path.write_text(yaml.safe_dump(_config()))
    job_id = core.sup.submit(SubmitRequest(config_path=str(path), cwd=str(core.work))).id
    core.turn()
    assert _shape(core, job_id, 1) == ((0, 1), 2, "1")
    core.runner.start(job_id, 1)
    core.tick()

    assert core.sup.gpus is not None
    core.sup.gpus.handle_xid(XidEvent(index=1, xid=79))
    core.turn()
    assert core.job(job_id).stop_intent == Cause.GPU_FAULT
    core.runner.end(job_id, 1, exit_code=143, ended_at=core.clock())
    core.turn()
    assert _shape(core, job_id, 2) == ((0,), 1, "2")  # no replacement free: 1 rank x 2 batches
    second = core.store.attempts(job_id)[1]
    assert (second.world_size, second.accumulate_grad_batches) == (1, 2)
    resize = [e for e in core.store.events(job_id=job_id) if e.kind == EventKind.RESIZE]
    assert [e.message for e in resize] == ["GPU 1 lost: continuing on 1 of 2 GPUs, accumulating 2 batches"]
    assert [w.details()["world_size"] for _, w in core.alerts if w.event == "resize"] == [1]

    core.runner.start(job_id, 2)
    core.tick()
    core.tick()
    assert core.runner.ops("request_checkpoint") == []  # GPU 1 still quarantined: nothing to grow onto
    assert core.sup.clear_gpu(1)
    core.turn()
    assert core.runner.ops("request_checkpoint") == [(job_id, 2)]
    core.tick()
    assert core.state(job_id) is JobState.RUNNING  # waits for the checkpoint it asked for
    _save(core, job_id, 2, 40)
    core.tick()
    job = core.job(job_id)
    assert job.state is JobState.STOPPING and job.stop_intent == Cause.RESIZE
    core.runner.end(job_id, 2, exit_code=143, ended_at=core.clock())
    core.turn()
    assert _shape(core, job_id, 3) == ((0, 1), 2, "1")
    first, second, third = core.store.attempts(job_id)
    assert (first.cause, second.cause) == (Cause.GPU_FAULT, Cause.RESIZE)
    assert (third.world_size, third.accumulate_grad_batches) == (2, 1)
    # max_restarts 1: the GPU fault is the one failure allowed; the resize is no failure (the job lives on)
    assert core.state(job_id) is JobState.STARTING
    messages = [e.message for e in core.store.events(job_id=job_id) if e.kind == EventKind.RESIZE]
    assert messages[-1] == "GPUs returned: back to its configured size, 2 of 2 GPUs, accumulating 1 batch"
    assert [w.details()["world_size"] for _, w in core.alerts if w.event == "resize"] == [1, 2]

    # a second GPU fault is the second failure: max_restarts 1 gives up (the resize between was never counted)
    core.runner.start(job_id, 3)
    core.tick()
    core.sup.gpus.handle_xid(XidEvent(index=0, xid=79))
    core.turn()
    core.runner.end(job_id, 3, exit_code=143, ended_at=core.clock())
    core.turn()
    assert core.state(job_id) is JobState.FAILED and "2 failures in" in (core.job(job_id).detail or "")


def test_below_min_devices_the_job_waits_and_says_how_few_it_would_take(gpu_core: Core) -> None:
    core = gpu_core
    assert core.sup.gpus is not None
    for gpu in (0, 1):
        core.sup.gpus.handle_xid(XidEvent(index=gpu, xid=79))
    core.turn()
    path = core.work / "ddp.yaml"
    path.write_text(yaml.safe_dump(_config()))
    job_id = core.sup.submit(SubmitRequest(config_path=str(path), cwd=str(core.work))).id
    core.turn()
    job = core.job(job_id)
    assert job.state is JobState.QUEUED and core.store.attempts(job_id) == []
    assert job.wait_reason == "waiting for 2 (elastic: at least 1) free healthy GPUs (0 of 2 free)"
    assert core.sup.clear_gpu(1)
    core.turn()
    assert _shape(core, job_id, 1) == ((1,), 1, "2")  # one back: it starts on it, accumulating 2
    assert [e.message for e in core.store.events(job_id=job_id) if e.kind == EventKind.RESIZE] == [
        "not enough healthy GPUs free: starting on 1 of 2 GPUs, accumulating 2 batches"]


@pytest.mark.parametrize(("trainer", "elastic", "gpus", "expected"), [
    ({"devices": 6}, {"min_devices": 2}, 6, "cannot be kept at sizes 5, 4: 6 is not a multiple of them"),
    ({"devices": 8, "accumulate_grad_batches": 1}, {"min_devices": 1, "sizes": [8, 6, 4]}, 8,
     "cannot be kept at size 6"),
    ({"devices": 1}, {"min_devices": 1}, 1, "trainer.devices >= 2; got 1"),
    ({"devices": 4, "accumulate_grad_batches": {0: 2}}, {"min_devices": 2}, 4,
     "needs an integer trainer.accumulate_grad_batches"),
    ({"devices": 4}, {"min_devices": 2}, 0, "needs supervision.gpus = trainer.devices (4); got 0"),
])
def test_submit_refuses_what_cannot_keep_the_global_batch(tmp_path: Path, trainer: dict[str, object],
                                                          elastic: dict[str, object], gpus: int,
                                                          expected: str) -> None:
    cfg = _config(**elastic)
    cfg["trainer"] = {"accelerator": "gpu" if gpus else "cpu", "strategy": "ddp", **trainer}
    cfg["supervision"] = {"elastic": elastic, **({"gpus": gpus} if gpus else {})}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    parsed = parse_job_config(path.read_text(), source=str(path))
    with pytest.raises(ConfigError) as refused:
        check_elastic_job(parsed, str(path))
    line = str(refused.value)
    assert "supervision.elastic" in line and str(path) in line and expected in line and "\n" not in line


def test_off_by_default(tmp_path: Path) -> None:
    cfg = _config()
    cfg["supervision"] = {}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    check_elastic_job(parse_job_config(path.read_text(), source=str(path)), str(path))  # nothing to refuse


def test_a_standby_has_the_size_the_job_runs_at_and_one_of_another_size_is_never_promoted(
        gpu_core: Core, tmp_path: Path) -> None:
    core = gpu_core
    path = core.work / "ddp.yaml"
    path.write_text(yaml.safe_dump(_config()))
    job = core.sup.submit(SubmitRequest(config_path=str(path), cwd=str(core.work)))
    keeper = core.sup.parts.keeper
    shrunk = keeper._spec(job, 3, 1)  # the standby of a job running at 1 of 2 GPUs
    assert shrunk.ranks.world_size == 1 and "--devices" in shrunk.command
    assert keeper._spec(job, 3).ranks.world_size == 2  # not elastic, or at its configured size
    # one prepared for 2 ranks is refused for an attempt of 1 (promote then drops it and launches cold)
    runner = StandbyLocalRunner(tmp_path / "state", lambda notice: None, watch_exits=False)
    me = psutil.Process()
    standby = Standby(job_id=job.id, attempt=3, attempt_dir=shrunk.attempt_dir, job_dir=Path(job.job_dir),
                      monitor_pid=me.pid, monitor_started=me.create_time(), config_path=path, config_mtime=0.0,
                      handle=ProcessHandle(me.pid, me.create_time()), world_size=2)
    assert runner._unusable(standby, shrunk) == "it has 2 rank(s), the attempt runs 1"
    standby.handle.close()
