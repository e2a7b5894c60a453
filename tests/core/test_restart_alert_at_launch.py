"""A backend whose launch decides where a restart runs (Slurm: inside the allocation or a new one): the
restart alert waits for the launch and tells where, exactly once, even when the daemon dies in between.

The backend record is the local one with ``restart_alert_at_launch`` on and a launch note of its own
(the core never names Slurm); the runner is the fake one, the store and the outbox are real.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from supervisor.alerts import make_alert
from supervisor.alerts.events import RestartAlert
from supervisor.core.runner_set import RunnerSet
from supervisor.rules.states import JobState
from supervisor.runners.backend import LaunchNews
from supervisor.runners.base import LaunchRefused
from supervisor.runners.registry import BACKENDS
from tests.core.conftest import Core, MakeCore


@pytest.fixture(autouse=True)
def _alert_at_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = dataclasses.replace(
        BACKENDS["local"], restart_alert_at_launch=True,
        launch_news=lambda state: LaunchNews(note=f"inside allocation 42 on n{state['fake_attempt']}"))
    monkeypatch.setattr(RunnerSet, "backend", lambda self, cfg: backend)


def _crashed(core: Core) -> str:
    """A job whose first attempt ran and crashed: the policy decided to restart it, the relaunch waits
    (as a Slurm launch waits for the last allocation to end: ``LaunchRefused(retry=True)``)."""
    job_id = core.submit()
    core.runner.start(job_id, 1)
    core.tick()
    core.runner.refuse = LaunchRefused("Slurm job 41 of this job is still COMPLETING", retry=True)
    core.runner.end(job_id, 1, exit_code=1, ended_at=core.clock())
    core.turn()
    assert core.state(job_id) is JobState.BACKOFF and core.runner.ops("launch") == [(job_id, 1)]
    core.runner.refuse = None
    return job_id


def _relaunch(core: Core, job_id: str) -> None:
    core.clock.advance(3600)  # past any backoff; a waiting launch is tried again at the tick
    core.tick()


def _restarts(core: Core) -> list[RestartAlert]:
    return [what for _, what in core.alerts if isinstance(what, RestartAlert)]


def test_the_restart_alert_waits_for_the_launch_and_says_where_the_attempt_went(make_core: MakeCore) -> None:
    core = make_core()
    job_id = _crashed(core)
    assert _restarts(core) == [] and core.store.pending_alerts() == []  # nothing told before the launch
    (restart,) = [e for e in core.store.events(job_id=job_id) if e.kind == "restart"]
    assert restart.data["alert"]["details"]["attempt"] == 2  # the facts are committed with the decision
    _relaunch(core, job_id)
    assert core.runner.ops("launch") == [(job_id, 1), (job_id, 2)]
    (what,) = _restarts(core)
    assert (what.cause, what.attempt, what.restarts, what.where) == ("crash", 2, 1, "inside allocation 42 on n2")
    launch = [e for e in core.store.events(job_id=job_id) if e.kind == "launch"][-1]
    assert what.alert_id == f"{job_id}-event-{launch.id}"  # committed with the launch
    text = make_alert(what.event, job_id=job_id, job_name="job", details=what.details(), wandb=None).text
    assert "Restarted inside allocation 42 on n2." in text, text


def test_a_daemon_killed_between_the_decision_and_the_launch_still_alerts_once(make_core: MakeCore) -> None:
    core = make_core()
    job_id = _crashed(core)
    assert _restarts(core) == []
    core.sup.close()  # the daemon dies while the job backs off

    again = make_core(core.runner)
    _relaunch(again, job_id)
    assert [(w.attempt, w.where) for w in _restarts(again)] == [(2, "inside allocation 42 on n2")]
    again.sup.close()

    third = make_core(core.runner)  # sent and marked: nobody sends it again, nor owes it
    _relaunch(third, job_id)
    assert _restarts(third) == [] and third.store.pending_alerts() == []


def test_a_relaunch_that_fails_sends_the_alert_at_once_and_only_once(make_core: MakeCore, tmp_path: Path) -> None:
    core = make_core()
    job_id = _crashed(core)
    core.runner.refuse = LaunchRefused("sbatch: error: invalid partition", retry=False)
    _relaunch(core, job_id)
    _relaunch(core, job_id)  # it keeps failing: told once
    (what,) = _restarts(core)
    assert what.where is None and what.not_started == "cannot start attempt 2: sbatch: error: invalid partition"
    details: dict[str, Any] = what.details()
    text = make_alert(what.event, job_id=job_id, job_name="job", details=details, wandb=None).text
    assert "Not relaunched yet: cannot start attempt 2: sbatch: error: invalid partition; retrying." in text
    core.runner.refuse = None
    _relaunch(core, job_id)
    assert core.runner.ops("launch") == [(job_id, 1), (job_id, 2)] and len(_restarts(core)) == 1
