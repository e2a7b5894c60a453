"""The core in-process for the scale and prune tests: a real ``Supervisor`` (SQLite, job files) with a fake
runner that keeps nothing of a forgotten job, a hand-moved clock, and the daemon's alert hook.

``finish_job`` runs one job to its end as a trainer would leave it: checkpoints in the manifest (the best is
not the newest), an exit record, then the attempt's end; the core does the rest (its ending, best.ckpt, the
alert through the outbox).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from supervisor.alerts.events import AlertEvent
from supervisor.core import Supervisor
from supervisor.core.submit import SubmitRequest
from supervisor.jobfiles.exitrecord import ExitRecord, write_exit_record
from supervisor.jobfiles.heartbeat import Heartbeat, write_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import CheckpointEntry, record_save
from supervisor.settings import DaemonSettings, RetentionConfig
from supervisor.store import JobRow, Store
from tests.support.fake_runner import FakeClock, FakeRunner
from tests.support.harness import REPO, SUPPORT, write_config


class LeanRunner(FakeRunner):
    """The fake runner, minus its own per-job memory: it forgets a job's attempts when the core does, and
    records no calls (a test of the daemon's memory must not measure the fake's)."""

    def launch(self, spec: Any) -> Any:
        state = super().launch(spec)
        self.calls.clear()
        return state

    def forget(self, job_id: str) -> None:
        for key in [k for k in self.attempts if k[0] == job_id]:
            del self.attempts[key]

    def tick(self) -> None:
        pass


@dataclass
class Core:
    sup: Supervisor
    runner: LeanRunner
    clock: FakeClock
    work: Path
    config: Path

    @property
    def store(self) -> Store:
        assert self.sup.store is not None
        return self.sup.store

    def turn(self) -> None:
        for _ in range(20):
            self.sup.timers.fire_due()
            if self.sup.loop.drain() == 0:
                return
        raise AssertionError("the loop kept finding work")

    def submit(self) -> str:
        job = self.sup.submit(SubmitRequest(config_path=str(self.config), cwd=str(self.work)))
        self.turn()
        return job.id

    def start(self, job_id: str) -> None:
        """The job's attempt 1 runs (its trainer made a step)."""
        self.runner.start(job_id, 1)
        self.beat(job_id)
        self.sup.tick()
        self.turn()

    def beat(self, job_id: str, step: int = 1) -> None:
        """Attempt 1's trainer writes a heartbeat now (after the clock moved on, a stale one is a hang)."""
        layout = JobLayout(Path(self.store.get_job(job_id).job_dir))
        layout.attempt(1).dir.mkdir(parents=True, exist_ok=True)
        beat = Heartbeat(pid=1, attempt=1, time=self.clock(), started_at=self.clock(), phase="train", step=step)
        write_heartbeat(layout.attempt(1).heartbeat, beat)

    def save_checkpoints(self, job_id: str, count: int) -> None:
        """The running attempt saves ``count`` more checkpoints, every 5 steps (every 2nd scores worse than the
        one before it, so the best is not the newest)."""
        layout = JobLayout(Path(self.store.get_job(job_id).job_dir))
        layout.checkpoints.mkdir(exist_ok=True)
        done = len(list(layout.checkpoints.glob("step=*.ckpt")))
        for k in range(done + 1, done + count + 1):
            step = 5 * k
            score = 1.0 / step if k % 2 else 1.0 / (step - 5) + 0.1
            path = layout.checkpoints / f"step={step}.ckpt"
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr("state.txt", f"step {step}")
            record_save(layout.manifest, CheckpointEntry(
                path=str(path), step=step, epoch=0, monitor="loss", score=score, mode="min",
                size=path.stat().st_size, time=self.clock(), attempt=1))

    def finish(self, job_id: str, *, checkpoints: int = 0) -> None:
        """The running attempt saves ``checkpoints``, writes its exit record and ends; the job completes."""
        self.save_checkpoints(job_id, checkpoints)
        layout = JobLayout(Path(self.store.get_job(job_id).job_dir))
        write_exit_record(layout.attempt(1).exit_record, ExitRecord(
            status="completed", time=self.clock(), pid=1, global_step=5 * checkpoints or 10, reason="finished"))
        self.runner.end(job_id, 1, exit_code=0, ended_at=self.clock())
        self.turn()

    def run_job(self, *, checkpoints: int = 0) -> str:
        job_id = self.submit()
        self.start(job_id)
        self.finish(job_id, checkpoints=checkpoints)
        return job_id


OpenCore = Callable[..., Core]


def core_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[Supervisor]) -> OpenCore:
    """Open supervisors on one state dir (a second one after ``close()`` is a daemon restart).

    The submit's import check (a subprocess: ``python -m fake_trainer --check``, nothing of which stays in the
    daemon) is skipped, so a test can finish hundreds of jobs in seconds.
    """
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SUPPORT), str(REPO)]))
    monkeypatch.setattr("supervisor.core.submit._check_imports", lambda *a, **k: None)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    config = write_config(work, "scale")
    clock = FakeClock()

    def make(runner: LeanRunner | None = None, *, retention: RetentionConfig | None = None) -> Core:
        fake = runner if runner is not None else LeanRunner()

        def factory(sup: Supervisor) -> LeanRunner:
            fake.notify = sup.on_runner_notice
            return fake

        settings = DaemonSettings(state_dir=str(tmp_path / "state"), trainer_module="fake_trainer",
                                  tick_interval=1.0, watch_files=False, check_timeout=60,
                                  retention=retention or RetentionConfig())
        holder: list[Supervisor] = []

        def alert(job: JobRow, what: AlertEvent) -> None:
            # What the daemon's hook does for every alert (daemon.Daemon._alert): read the job's frozen config.
            # The ending's alert comes after the core forgot the job.
            holder[0].job_config(job)

        sup = Supervisor(settings, clock=clock, boot_id="boot-1", runners={"local": factory}, alert_hook=alert)
        holder.append(sup)
        sup.open()
        opened.append(sup)
        return Core(sup, fake, clock, work, config)

    return make
