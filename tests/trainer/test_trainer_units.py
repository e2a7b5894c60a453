"""The trainer's torch-free parts, in this process: heartbeat writer, signal state, W&B mode, durations."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.heartbeat import read_heartbeat
from trainer.build import parse_max_time
from trainer.deadline import Deadline, stop_time
from trainer.progress import DEFAULT_INTERVAL, HeartbeatWriter, interval_from_env
from trainer.signals import SignalState, Terminated, exit_code_for
from trainer.wandb_run import has_api_key, resolve_mode, wandb_dir

# --- heartbeat writer ------------------------------------------------------------------------------


class Clock:
    """The heartbeat writer's ``time`` module with a monotonic clock the test moves (``time.time`` is real):
    step times are what the test says, not what a loaded box's scheduler makes of a sleep."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("trainer.progress.time", fake)
    return fake


def make_writer(tmp_path: Path, interval: float) -> HeartbeatWriter:
    return HeartbeatWriter(tmp_path / "heartbeat.json", tmp_path / "metrics.jsonl", attempt=3,
                           started_at=123.0, interval=interval)


def test_phase_changes_are_written_at_once_and_steps_are_throttled(tmp_path: Path) -> None:
    writer = make_writer(tmp_path, interval=3600)
    writer.write()
    beat = read_heartbeat(tmp_path / "heartbeat.json")
    assert beat is not None
    assert (beat.phase, beat.step, beat.attempt, beat.started_at, beat.pid) == ("setup", 0, 3, 123.0, os.getpid())

    writer.step_done(1, 0)  # setup -> train: a phase change, written now
    assert read_heartbeat(tmp_path / "heartbeat.json").step == 1  # type: ignore[union-attr]
    for step in range(2, 50):
        writer.step_done(step, 0)  # within the interval: nothing written
    assert read_heartbeat(tmp_path / "heartbeat.json").step == 1  # type: ignore[union-attr]

    writer.set_phase("validate")
    beat = read_heartbeat(tmp_path / "heartbeat.json")
    assert beat is not None and (beat.phase, beat.step) == ("validate", 49)


def test_steps_write_once_the_interval_has_passed(tmp_path: Path, clock: Clock) -> None:
    writer = make_writer(tmp_path, interval=0.05)
    writer.step_done(1, 0)
    clock.advance(0.04)
    writer.step_done(2, 0)
    assert read_heartbeat(tmp_path / "heartbeat.json").step == 1  # type: ignore[union-attr]
    clock.advance(0.02)
    writer.step_done(3, 0)
    beat = read_heartbeat(tmp_path / "heartbeat.json")
    assert beat is not None and beat.step == 3


def test_step_time_is_the_mean_and_max_of_recent_intervals(tmp_path: Path, clock: Clock) -> None:
    writer = make_writer(tmp_path, interval=0)
    writer.step_done(1, 0)
    for step, pause in ((2, 0.01), (3, 0.03)):
        clock.advance(pause)
        writer.step_done(step, 0)
    beat = read_heartbeat(tmp_path / "heartbeat.json")
    assert beat is not None and beat.step_time is not None and beat.max_step_time is not None
    assert (beat.step_time, beat.max_step_time) == (pytest.approx(0.02), pytest.approx(0.03))


def test_time_outside_training_is_not_step_time(tmp_path: Path, clock: Clock) -> None:
    writer = make_writer(tmp_path, interval=0)
    writer.step_done(1, 0)
    clock.advance(0.02)
    writer.step_done(2, 0)
    writer.set_phase("validate")
    clock.advance(10.0)  # a validation: not part of any step
    writer.set_phase("train")
    clock.advance(0.03)
    writer.step_done(3, 0)
    beat = read_heartbeat(tmp_path / "heartbeat.json")
    assert beat is not None and beat.max_step_time is not None
    assert beat.max_step_time == pytest.approx(0.03)


def test_metrics_lines_are_appended_only_when_something_changed(tmp_path: Path) -> None:
    writer = make_writer(tmp_path, interval=0)
    metrics = {"train_loss": 1.0}
    writer.read_metrics = lambda: dict(metrics)
    writer.step_done(1, 0)
    writer.write()  # same step, same metrics: no new line
    metrics["train_loss"] = 0.5
    writer.step_done(2, 0)
    lines = read_json_lines(tmp_path / "metrics.jsonl")
    assert [(line["step"], line["metrics"]) for line in lines] == [(1, {"train_loss": 1.0}), (2, {"train_loss": 0.5})]
    assert all(set(line) == {"time", "step", "epoch", "metrics"} for line in lines)


def test_unknown_phase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown heartbeat phase"):
        make_writer(tmp_path, 1).set_phase("sleeping")


@pytest.mark.parametrize(("raw", "expected"), [
    (None, DEFAULT_INTERVAL), ("", DEFAULT_INTERVAL), ("0.5", 0.5), ("0", 0.0), ("abc", DEFAULT_INTERVAL),
    ("-1", DEFAULT_INTERVAL),
])
def test_heartbeat_interval_from_env(raw: str | None, expected: float) -> None:
    env = {} if raw is None else {"ML_SUPERVISOR_HEARTBEAT_INTERVAL": raw}
    assert interval_from_env(env) == expected


# --- signals, for real, to this process ------------------------------------------------------------


@pytest.fixture
def signal_state(tmp_path: Path) -> Iterator[SignalState]:
    """A SignalState installed in this process; pytest's own handlers come back afterwards."""
    import faulthandler

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    state = SignalState(tmp_path / "stacks.txt")
    state.install()
    try:
        yield state
    finally:
        faulthandler.unregister(signal.SIGUSR2)
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _deliver(signum: signal.Signals) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # Python runs the handler at the next bytecode boundary of the main thread


def test_sigterm_outside_fit_raises_terminated(signal_state: SignalState) -> None:
    with pytest.raises(Terminated) as caught:
        _deliver(signal.SIGTERM)
    assert caught.value.signum == signal.SIGTERM
    assert signal_state.stop_signal_name == "SIGTERM"
    assert exit_code_for(signal.SIGTERM) == 143


def test_sigterm_inside_fit_only_records(signal_state: SignalState) -> None:
    signal_state.deferred = True
    _deliver(signal.SIGTERM)
    assert signal_state.stop_signal == signal.SIGTERM


def test_sigusr1_requests_one_save(signal_state: SignalState) -> None:
    assert not signal_state.take_save_request()
    _deliver(signal.SIGUSR1)
    assert signal_state.take_save_request()
    assert not signal_state.take_save_request()


def test_sigusr2_dumps_stacks_even_after_the_handler_was_reset(signal_state: SignalState) -> None:
    # What Lightning's teardown does to a signal it saw as SIG_DFL; register_stack_dump undoes it.
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    signal_state.register_stack_dump()
    _deliver(signal.SIGUSR2)
    text = signal_state.stacks_path.read_text()
    assert "Current thread" in text or "Thread 0x" in text
    assert "test_trainer_units.py" in text


# --- W&B mode and directory ------------------------------------------------------------------------


def netrc_with(tmp_path: Path, host: str | None) -> str:
    path = tmp_path / "netrc"
    path.write_text(f"machine {host}\n  login user\n  password secret\n" if host else "")
    return str(path)


def test_api_key_from_env_or_netrc(tmp_path: Path) -> None:
    assert has_api_key({"WANDB_API_KEY": "abc", "NETRC": netrc_with(tmp_path, None)})
    assert has_api_key({"NETRC": netrc_with(tmp_path, "api.wandb.ai")})
    assert not has_api_key({"NETRC": netrc_with(tmp_path, "example.com")})
    assert has_api_key({"NETRC": netrc_with(tmp_path, "wandb.corp"), "WANDB_BASE_URL": "https://wandb.corp"})
    assert not has_api_key({"NETRC": str(tmp_path / "missing")})


@pytest.mark.parametrize(("configured", "env_mode", "key", "expected"), [
    ("online", None, True, "online"),
    ("online", None, False, "offline"),  # no credentials: never prompt, never fail
    ("online", "offline", True, "offline"),
    ("online", "dryrun", True, "offline"),
    ("online", "disabled", True, "disabled"),
    ("offline", None, True, "offline"),
    ("disabled", "online", True, "disabled"),
])
def test_wandb_mode(tmp_path: Path, configured: str, env_mode: str | None, key: bool, expected: str) -> None:
    env = {"NETRC": netrc_with(tmp_path, "api.wandb.ai" if key else None)}
    if env_mode:
        env["WANDB_MODE"] = env_mode
    mode, note = resolve_mode(configured, env)
    assert mode == expected
    assert (note is None) == (mode == configured)


def test_wandb_dir_is_the_jobs_beside_attempts(tmp_path: Path) -> None:
    assert wandb_dir(None, tmp_path / "job" / "attempts" / "2") == tmp_path / "job" / "wandb"
    assert wandb_dir(None, tmp_path / "standalone") == tmp_path / "standalone" / "wandb"
    assert wandb_dir(str(tmp_path / "w"), tmp_path / "job" / "attempts" / "2") == tmp_path / "w"


# --- durations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("00:12:00:00", timedelta(hours=12)),
    ("1:00:30:05", timedelta(days=1, minutes=30, seconds=5)),
    ({"hours": 2, "minutes": 3}, timedelta(hours=2, minutes=3)),
    ("90m", timedelta(minutes=90)),
    (3600, timedelta(hours=1)),
])
def test_max_time_forms(value: object, expected: timedelta) -> None:
    assert parse_max_time(value) == expected


@pytest.mark.parametrize("value", ["soon", {"fortnights": 1}, -5])
def test_max_time_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_max_time(value)


@pytest.mark.parametrize(("remaining", "margin"), [(3600.0, 60.0), (300.0, 30.0), (10.0, 1.0), (0.0, 0.0), (-5.0, 0.0)])
def test_deadline_margin_is_the_smaller_of_60s_and_a_tenth(remaining: float, margin: float) -> None:
    now = 1_000_000.0
    assert stop_time(now + remaining, now=now) == pytest.approx(now + remaining - margin)


def test_deadline_is_due_at_its_stop_time() -> None:
    now = time.time()
    assert Deadline(now - 1).due()
    late = Deadline(now + 3600, now=now)
    assert not late.due() and late.stop_at == pytest.approx(now + 3600 - 60)
    assert not late.triggered


# --- the job's environment -------------------------------------------------------------------------


def test_apply_environment_puts_workdir_first_and_sets_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.config import build_job_config
    from supervisor.errors import ConfigError
    from trainer.job import apply_environment

    monkeypatch.setattr("sys.path", ["/somewhere", str(tmp_path)])
    monkeypatch.delenv("TRAINER_TEST_VAR", raising=False)
    raw = {"name": "t", "workdir": str(tmp_path), "env": {"TRAINER_TEST_VAR": "42"},
           "model": {"class_path": "a.B"}, "data": {"class_path": "a.C"}}
    apply_environment(build_job_config(raw, source="job.yaml"), "job.yaml")
    assert sys.path == [str(tmp_path), "/somewhere"]
    assert os.environ["TRAINER_TEST_VAR"] == "42"
    raw["workdir"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"^job.yaml: workdir: no such directory: "):
        apply_environment(build_job_config(raw, source="job.yaml"), "job.yaml")


def test_a_heartbeat_lost_to_a_full_disk_does_not_stop_training(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # issue 11, item 3: a real ENOSPC (a filled tmpfs); the write returns, the next one after space is freed lands
    from tests.support.full_disk import fill, small_tmpfs

    with small_tmpfs(tmp_path / "small") as mount:
        writer = HeartbeatWriter(mount / "heartbeat.json", mount / "metrics.jsonl", attempt=1, started_at=time.time())
        writer.metrics = {"loss": 0.5}
        filler = fill(mount)
        writer.write()  # raised OSError before the fix, ending the fit
        assert writer.failed_writes == 1
        assert not (mount / "heartbeat.json").exists()
        assert "cannot write the heartbeat" in capsys.readouterr().err
        filler.unlink()
        writer.set_phase("train", step=7)
        beat = read_heartbeat(mount / "heartbeat.json")
        assert beat is not None and beat.phase == "train"
