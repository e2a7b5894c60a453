"""Fixtures for in-process tests of the core: a real ``Supervisor`` (real SQLite, real job files) driven
by a fake runner and a hand-moved clock, with no loop thread and no wall-clock waits."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from supervisor.alerts.events import AlertEvent
from supervisor.core import AlertHook, Supervisor
from supervisor.core.submit import SubmitRequest
from supervisor.rules.states import JobState
from supervisor.settings import DaemonSettings
from supervisor.store import JobRow, Store
from tests.support.fake_runner import FakeClock, FakeRunner
from tests.support.harness import REPO, SUPPORT, write_config


@dataclass
class Core:
    """A supervisor under test and the handles a test moves it with."""

    sup: Supervisor
    runner: FakeRunner
    clock: FakeClock
    work: Path
    alerts: list[tuple[str, AlertEvent]]  # (job id, what) sent to the alert hook
    opened: list[Supervisor] = field(default_factory=list)

    @property
    def store(self) -> Store:
        assert self.sup.store is not None
        return self.sup.store

    def turn(self) -> None:
        """What the loop does in one turn: handle what is queued, fire due timers, until nothing is left."""
        for _ in range(20):
            self.sup.timers.fire_due()
            if self.sup.loop.drain() == 0:
                return
        raise AssertionError("the loop kept finding work: a wake-up loop?")

    def tick(self) -> None:
        self.sup.tick()
        self.turn()

    def submit(self, name: str = "job", **config: object) -> str:
        supervision = config.pop("supervision", None)
        path = write_config(self.work, name, supervision=supervision, **config)  # type: ignore[arg-type]
        job = self.sup.submit(SubmitRequest(config_path=str(path), cwd=str(self.work)))
        self.turn()
        return job.id

    def job(self, job_id: str) -> JobRow:
        return self.store.get_job(job_id)

    def state(self, job_id: str) -> JobState:
        return self.job(job_id).state

    def events(self, job_id: str) -> list[str]:
        return [e.kind for e in self.store.events(job_id=job_id)]


MakeCore = Callable[..., Core]


@pytest.fixture
def make_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeCore]:
    """Open supervisors on one state dir (a second one after ``close()`` is a daemon restart)."""
    # The submit-time import check runs the fake trainer's --check in a subprocess: make it importable.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SUPPORT), str(REPO)]))
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    clock = FakeClock()
    opened: list[Supervisor] = []

    def make(runner: FakeRunner | None = None, *, boot_id: str = "boot-1",
             alert_hook: AlertHook | None = None) -> Core:
        fake = runner if runner is not None else FakeRunner()

        def factory(sup: Supervisor) -> FakeRunner:
            fake.notify = sup.on_runner_notice
            return fake

        settings = DaemonSettings(state_dir=str(tmp_path / "state"), trainer_module="fake_trainer",
                                  tick_interval=1.0, watch_files=False, check_timeout=60)
        alerts: list[tuple[str, AlertEvent]] = []
        sup = Supervisor(settings, clock=clock, boot_id=boot_id, runners={"local": factory},
                         alert_hook=alert_hook or (lambda job, what: alerts.append((job.id, what))))
        sup.open()
        opened.append(sup)
        return Core(sup, fake, clock, work, alerts, opened)

    yield make
    for sup in opened:
        sup.close()
