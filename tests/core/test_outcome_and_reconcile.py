"""``outcome.classify_end`` and ``reconcile.classify`` directly: the pure functions under the end-of-attempt path."""

from __future__ import annotations

import pytest

from supervisor.core.reconciling import Verdict, classify
from supervisor.jobfiles.exitrecord import ExitRecord
from supervisor.jobfiles.monitorfiles import MonitorExit
from supervisor.rules.causes import Cause
from supervisor.rules.outcome import classify_end
from supervisor.runners.base import Observation, Phase


def _record(status: str, **kw: object) -> ExitRecord:
    return ExitRecord(status=status, time=1.0, pid=10, **kw)  # type: ignore[arg-type]


def _exit(code: int | None = None, signal: str | None = None, error: str | None = None) -> MonitorExit:
    return MonitorExit(exit_code=code, signal=signal, ended_at=5.0, error=error)


@pytest.mark.parametrize(("record", "process_exit", "intent", "cause", "detail"), [
    (_record("completed", reason="max_epochs"), _exit(0), None, Cause.COMPLETED, "completed (max_epochs)"),
    # completion wins over the daemon's own stop: it finished before the stop landed
    (_record("completed", reason="max_steps"), _exit(0), Cause.HANG, Cause.COMPLETED, "completed (max_steps)"),
    (_record("config_error", message="x.yaml: model: bad"), _exit(2), None, Cause.CONFIG_ERROR, "x.yaml: model: bad"),
    (_record("signal", signal="SIGTERM"), _exit(0), Cause.USER_STOP, Cause.USER_STOP, "user stop"),
    (None, _exit(None, "SIGKILL"), Cause.HANG, Cause.HANG, "hang"),
    (None, _exit(127, error="cannot start the trainer: no such file"), None, Cause.CRASH,
     "cannot start the trainer: no such file"),
    (_record("exception", exception={"type": "RuntimeError", "message": "CUDA error"}), _exit(1), None, Cause.CRASH,
     "RuntimeError: CUDA error"),
    (_record("signal", signal="SIGINT"), _exit(130), None, Cause.CRASH,
     "stopped by SIGINT (not sent by the supervisor)"),
    (None, _exit(None, "SIGKILL"), None, Cause.CRASH, "killed by SIGKILL"),
    (None, _exit(0), None, Cause.CRASH, "exited 0 without an exit record"),
    (None, _exit(3), None, Cause.CRASH, "exited with code 3"),
    (None, None, None, Cause.VANISHED, "the attempt's monitor vanished without an exit status"),
])
def test_classify_end(record: ExitRecord | None, process_exit: MonitorExit | None, intent: Cause | None,
                      cause: Cause, detail: str) -> None:
    outcome = classify_end(record, process_exit, intent)
    assert (outcome.cause, outcome.detail) == (cause, detail)
    assert outcome.exit_code == (process_exit.exit_code if process_exit else None)
    assert outcome.signal == (process_exit.signal if process_exit else None)


def test_classify_end_keeps_the_completion_reason_for_the_policy() -> None:
    outcome = classify_end(_record("completed", reason="deadline"), _exit(0), None)
    assert outcome.completion_reason == "deadline"


def _seen(phase: Phase, *, ended: bool = False, boot: str | None = None) -> Observation:
    return Observation(phase, {}, _exit(1) if ended else None, boot_id=boot)


@pytest.mark.parametrize(("seen", "recorded_boot", "verdict"), [
    (_seen(Phase.RUNNING, boot="b1"), "b1", Verdict.ADOPT),
    (_seen(Phase.PENDING), "b1", Verdict.ADOPT),  # a monitor still starting its trainer
    (_seen(Phase.ENDED, ended=True, boot="b1"), "b1", Verdict.COLLECT),
    (_seen(Phase.ENDED), "b1", Verdict.VANISHED),
    (_seen(Phase.RUNNING, boot="b0"), "b1", Verdict.REBOOTED),  # the runner's own boot id wins
    (_seen(Phase.ENDED, ended=True), "b0", Verdict.REBOOTED),  # a reboot, whatever the files say
    (_seen(Phase.RUNNING), None, Verdict.ADOPT),  # no boot id known: trust the liveness check
])
def test_reconcile_classify(seen: Observation, recorded_boot: str | None, verdict: Verdict) -> None:
    assert classify(seen, recorded_boot, "b1") is verdict


def test_every_job_state_is_an_event_kind() -> None:
    """A transition without its own kind records the new state's name: it must be a kind of event."""
    from supervisor.rules.causes import EventKind
    from supervisor.rules.states import JobState

    assert {s.value for s in JobState} <= {k.value for k in EventKind}
