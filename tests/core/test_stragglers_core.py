"""The core's straggler watch, in-process: per-rank heartbeats written by hand, NVML simulated (the one
simulation the project accepts), the fake runner: who is named, what NVML says with it, and the move."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from supervisor.core.submit import SubmitRequest
from supervisor.jobfiles.heartbeat import Heartbeat, write_heartbeat
from supervisor.jobfiles.layout import AttemptLayout
from supervisor.rules.causes import Cause, EventKind
from supervisor.rules.states import JobState
from tests.core.conftest import Core, MakeCore
from tests.support.harness import wait_for

FAKE_GPUS = {"gpus": [
    {"index": 0, "sm_clock_mhz": 1980, "sm_clock_max_mhz": 1980, "pcie_gen": 5, "pcie_gen_max": 5},
    {"index": 1, "sm_clock_mhz": 1005, "sm_clock_max_mhz": 1980, "throttle_reasons": ["hw_thermal_slowdown"],
     "temperature_c": 91, "power_w": 410.5, "power_limit_w": 700, "pcie_width": 8, "pcie_width_max": 16},
    {"index": 2, "sm_clock_mhz": 1980, "sm_clock_max_mhz": 1980},
]}


@pytest.fixture
def gpu_core(make_core: MakeCore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Core:
    nvml = tmp_path / "nvml.json"
    nvml.write_text(json.dumps(FAKE_GPUS))
    monkeypatch.setenv("ML_SUPERVISOR_NVML", f"fake:{nvml}")
    core = make_core()
    assert core.sup.gpus is not None
    wait_for(lambda: len(core.sup.gpus.allocatable()) == 3, timeout=10, what="the GPUs read once")  # type: ignore
    return core


def _submit(core: Core, **stragglers: object) -> str:
    cfg = {"name": "ddp", "model": {"class_path": "fake.Model"}, "data": {"class_path": "fake.Data"},
           "logger": {"wandb": {"mode": "disabled"}},
           "trainer": {"accelerator": "gpu", "devices": 2, "strategy": "ddp"},
           "supervision": {"stop_grace": "5s", "stragglers": {"window": 3, **stragglers}}}
    path = core.work / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    job = core.sup.submit(SubmitRequest(config_path=str(path), cwd=str(core.work)))
    core.turn()
    core.runner.start(job.id, 1)
    core.tick()
    return job.id


def _beat(core: Core, job_id: str, n: int, step: int, ms: dict[int, float]) -> None:
    spec = core.runner.attempts[(job_id, n)].spec
    assert spec is not None
    layout = AttemptLayout(spec.attempt_dir)
    spec.attempt_dir.mkdir(parents=True, exist_ok=True)
    for rank, compute_ms in ms.items():
        write_heartbeat(layout.heartbeat_of(rank), Heartbeat(
            pid=100 + rank, attempt=n, time=time.time(), started_at=time.time(), phase="train", step=step,
            step_time=0.1, compute_time=compute_ms / 1000, compute_best=0.010, rank=rank))


def _stragglers(core: Core, job_id: str) -> list[dict[str, object]]:
    return [e.data for e in core.store.events(job_id=job_id) if e.kind == EventKind.STRAGGLER]


def test_the_slow_rank_is_named_with_its_gpu_and_what_nvml_says_of_it(gpu_core: Core) -> None:
    core = gpu_core
    job_id = _submit(core)
    spec = core.runner.attempts[(job_id, 1)].spec
    assert spec is not None and spec.gpus == (0, 1)
    for step in range(10, 60, 10):
        _beat(core, job_id, 1, step, {0: 10.0, 1: 25.0})
        core.tick()
    events = _stragglers(core, job_id)
    assert len(events) == 1, events  # named once, not at every look
    event = events[0]
    assert event["rank"] == 1 and event["gpu"] == 1 and event["relative"] == 0.4
    assert event["gpu_context"]["throttle_reasons"] == ["hw_thermal_slowdown"]  # type: ignore[index]
    assert event["gpu_context"]["pcie_width"] == 8 and event["action"] == "alert"  # type: ignore[index]
    message = next(e.message for e in core.store.events(job_id=job_id) if e.kind == EventKind.STRAGGLER)
    assert message.startswith("straggler: rank 1 (GPU 1)") and "throttled: hw_thermal_slowdown" in message
    assert [w.event for _, w in core.alerts].count("straggler") == 1
    assert core.state(job_id) is JobState.RUNNING  # action: alert only


def test_looks_without_new_steps_or_outside_training_are_not_counted(gpu_core: Core) -> None:
    core = gpu_core
    job_id = _submit(core)
    for _ in range(6):  # the same step over and over: one look
        _beat(core, job_id, 1, 10, {0: 10.0, 1: 25.0})
        core.tick()
    assert _stragglers(core, job_id) == []


def test_restart_without_quarantines_the_straggler_gpu_and_relaunches_elsewhere(gpu_core: Core) -> None:
    core = gpu_core
    job_id = _submit(core, action="restart_without")
    for step in range(10, 40, 10):
        _beat(core, job_id, 1, step, {0: 10.0, 1: 25.0})
        core.tick()
    job = core.job(job_id)
    assert job.state is JobState.STOPPING and job.stop_intent == Cause.STRAGGLER
    assert core.sup.gpus is not None and 1 in core.sup.gpus.quarantined()
    core.runner.end(job_id, 1, exit_code=143, ended_at=core.clock())
    core.turn()
    first, second = core.store.attempts(job_id)
    assert first.cause == Cause.STRAGGLER and second.gpus == [0, 2]
    assert core.job(job_id).restarts == 1
