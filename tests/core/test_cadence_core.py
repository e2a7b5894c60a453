"""checkpoint.every_n_train_steps: auto in the core: the first attempt gets the trainer's default, the next one
Young/Daly's interval from the measured save cost, step time and the job's failures (fake runner, real files)."""

from __future__ import annotations

import time

import yaml

from supervisor.core.submit import SubmitRequest
from supervisor.jobfiles.heartbeat import Heartbeat, write_heartbeat
from supervisor.jobfiles.layout import AttemptLayout, JobLayout
from supervisor.jobfiles.manifest import CheckpointEntry, record_save
from supervisor.rules.cadence import choose_cadence
from supervisor.rules.causes import EventKind
from tests.core.conftest import MakeCore


def _flag(command: tuple[str, ...], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_auto_starts_at_the_default_then_follows_the_measured_cost_and_failures(make_core: MakeCore) -> None:
    core = make_core()
    cfg = {"name": "auto", "model": {"class_path": "fake.Model"}, "data": {"class_path": "fake.Data"},
           "logger": {"wandb": {"mode": "disabled"}}, "checkpoint": {"every_n_train_steps": "auto",
                                                                  "assumed_mtbf": "1h"},
           "supervision": {"backoff": {"initial": "1s", "max": "2s"}}}
    path = core.work / "auto.yaml"
    path.write_text(yaml.safe_dump(cfg))
    job_id = core.sup.submit(SubmitRequest(config_path=str(path), cwd=str(core.work))).id
    core.turn()
    first = core.runner.attempts[(job_id, 1)].spec
    assert first is not None and _flag(first.command, "--checkpoint-every") is None  # nothing measured yet
    launch = core.store.last_event_data(job_id, EventKind.LAUNCH)
    assert launch is not None and launch["cadence"] is None
    core.runner.start(job_id, 1)
    core.tick()
    job_dir = JobLayout(first.lock_path.parent)
    layout = AttemptLayout(first.attempt_dir)
    first.attempt_dir.mkdir(parents=True, exist_ok=True)
    for step, cost in ((100, 0.4), (200, 0.5), (300, 0.6)):
        record_save(job_dir.manifest, CheckpointEntry(path=str(job_dir.checkpoints / f"s{step}.ckpt"), step=step,
                                                      epoch=0, monitor=None, score=None, mode="min", size=1,
                                                      time=time.time(), attempt=1, save_s=cost))
    write_heartbeat(layout.heartbeat, Heartbeat(pid=1, attempt=1, time=time.time(), started_at=time.time(),
                                                phase="train", step=300, step_time=0.05))
    core.clock.advance(600)
    core.runner.end(job_id, 1, exit_code=1, ended_at=core.clock())  # a crash: the job's first failure
    core.turn()
    second = core.runner.attempts[(job_id, 2)].spec
    assert second is not None
    expected = choose_cadence(save_s=0.5, step_s=0.05, running_s=600.0, failures=1, assumed_mtbf_s=3600.0)
    assert _flag(second.command, "--checkpoint-every") == str(expected.every_n_train_steps)
    # sqrt(2 * 0.5 s * (600 + 3600) / 2) - 0.5 = 45.33 s, at 0.05 s a step
    assert expected.every_n_train_steps == 907
    launch = core.store.last_event_data(job_id, EventKind.LAUNCH)
    assert launch is not None and launch["cadence"]["every_n_train_steps"] == 907
    assert launch["cadence"]["failures"] == 1 and launch["cadence"]["save_s"] == 0.5
