"""Multi-rank attempts on paper: per-rank file names, the monitor's files old and new, the attempt's cause, and
the slowest-rank progress the hang clock reads."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from supervisor.jobfiles.exitrecord import ExitRecord, read_exit_record, write_exit_record
from supervisor.jobfiles.heartbeat import Heartbeat, read_heartbeat, write_heartbeat
from supervisor.jobfiles.layout import AttemptLayout, per_rank_name
from supervisor.jobfiles.monitorfiles import (
    MonitorExit,
    MonitorStart,
    RankEnding,
    RankProcess,
    read_monitor_exit,
    read_monitor_start,
    write_monitor_exit,
    write_monitor_start,
)
from supervisor.processes.ports import choose_master_port, port_is_free, wait_port_free
from supervisor.processes.rank_group import rank_environment
from supervisor.rules.hang import check_hang
from supervisor.rules.outcome import classify_end
from supervisor.rules.rank_outcome import classify_ranks_end, slowest_rank_heartbeat
from supervisor.settings import HangConfig

T = 1_700_000_000.0


# --- layout ---------------------------------------------------------------------------------------


def test_rank_0_keeps_todays_names_and_other_ranks_get_their_own(tmp_path: Path) -> None:
    layout = AttemptLayout(tmp_path)
    assert layout.heartbeat_of(0) == layout.heartbeat == tmp_path / "heartbeat.json"
    assert layout.exit_record_of(0) == layout.exit_record
    assert layout.stacks_of(0) == layout.stacks
    assert layout.stdout_of(0) == layout.stdout and layout.stderr_of(0) == layout.stderr
    assert [p.name for p in (layout.heartbeat_of(1), layout.exit_record_of(1), layout.stacks_of(1),
                             layout.stdout_of(3), layout.stderr_of(12))] == [
        "heartbeat.rank1.json", "exit.rank1.json", "stacks.rank1.txt", "stdout.rank3.log", "stderr.rank12.log"]
    with pytest.raises(ValueError, match="rank must be >= 0"):
        per_rank_name("exit.json", -1)


def test_records_and_beats_carry_their_rank_and_old_files_read_as_rank_0(tmp_path: Path) -> None:
    write_exit_record(tmp_path / "exit.rank1.json", ExitRecord(status="exception", time=T, pid=7, rank=1))
    record = read_exit_record(tmp_path / "exit.rank1.json")
    assert record is not None and record.rank == 1
    (tmp_path / "old-exit.json").write_text(json.dumps({"status": "completed", "time": T, "pid": 3}))
    old = read_exit_record(tmp_path / "old-exit.json")
    assert old is not None and (old.status, old.rank) == ("completed", 0)
    write_heartbeat(tmp_path / "hb.json", Heartbeat(pid=8, attempt=1, time=T, started_at=T, rank=1))
    beat = read_heartbeat(tmp_path / "hb.json")
    assert beat is not None and beat.rank == 1
    (tmp_path / "old-hb.json").write_text(json.dumps({"pid": 3, "attempt": 1, "time": T}))
    old_beat = read_heartbeat(tmp_path / "old-hb.json")
    assert old_beat is not None and old_beat.rank == 0


# --- the monitor's files ----------------------------------------------------------------------------


def test_monitor_files_round_trip_with_ranks(tmp_path: Path) -> None:
    start = MonitorStart(monitor_pid=10, trainer_pid=11, pgid=11, started_at=T, boot_id="b", world_size=2,
                         master_addr="127.0.0.1", master_port=29517,
                         ranks=[RankProcess(0, 0, 11), RankProcess(1, 1, 12)])
    write_monitor_start(tmp_path / "monitor.json", start)
    assert read_monitor_start(tmp_path / "monitor.json") == start
    assert start.pids() == {0: 11, 1: 12}
    end = MonitorExit(exit_code=None, signal="SIGKILL", ended_at=T + 1, trainer_pid=11, world_size=2, first_rank=1,
                      ranks=[RankEnding(0, 11, 1, None, T + 0.5, "SIGTERM"), RankEnding(1, 12, None, "SIGKILL", T)])
    write_monitor_exit(tmp_path / "monitor-exit.json", end)
    assert read_monitor_exit(tmp_path / "monitor-exit.json") == end
    # Readers that know nothing of ranks still find today's keys.
    raw = json.loads((tmp_path / "monitor-exit.json").read_text())
    assert (raw["exit_code"], raw["signal"], raw["trainer_pid"]) == (None, "SIGKILL", 11)
    assert "error" not in raw


def test_monitor_files_without_ranks_read_as_one_rank_0(tmp_path: Path) -> None:
    (tmp_path / "monitor.json").write_text(json.dumps(
        {"monitor_pid": 10, "trainer_pid": 11, "pgid": 11, "started_at": T, "boot_id": "b", "subreaper": True,
         "command": ["python", "-m", "trainer"]}))
    start = read_monitor_start(tmp_path / "monitor.json")
    assert start is not None and (start.world_size, start.ranks) == (1, [RankProcess(0, 0, 11)])
    (tmp_path / "monitor-exit.json").write_text(json.dumps(
        {"exit_code": 1, "signal": None, "ended_at": T, "trainer_pid": 11, "leftovers_killed": [99]}))
    end = read_monitor_exit(tmp_path / "monitor-exit.json")
    assert end is not None
    assert (end.world_size, end.first_rank, end.leftovers_killed) == (1, 0, [99])
    assert end.ranks == [RankEnding(rank=0, pid=11, exit_code=1, signal=None, ended_at=T)]
    # A monitor that could not start the trainer: an error and no rank at all.
    (tmp_path / "failed.json").write_text(json.dumps(
        {"exit_code": 127, "signal": None, "ended_at": T, "trainer_pid": None, "error": "cannot start",
         "leftovers_killed": []}))
    failed = read_monitor_exit(tmp_path / "failed.json")
    assert failed is not None and failed.error == "cannot start" and failed.ranks[0].exit_code == 127
    (tmp_path / "garbage.json").write_text("{not json")
    assert read_monitor_exit(tmp_path / "garbage.json") is None
    assert read_monitor_start(tmp_path / "missing.json") is None


# --- the attempt's cause ------------------------------------------------------------------------------


def two_ranks(first: RankEnding, second: RankEnding) -> MonitorExit:
    return MonitorExit(exit_code=first.exit_code, signal=first.signal, ended_at=second.ended_at, trainer_pid=11,
                       world_size=2, first_rank=first.rank, ranks=sorted([first, second], key=lambda e: e.rank))


def record(status: str, rank: int, **fields: object) -> ExitRecord:
    return ExitRecord(status=status, time=T, pid=10 + rank, rank=rank, **fields)  # type: ignore[arg-type]


def test_a_killed_rank_is_named_not_the_rank_that_failed_after_it() -> None:
    end = two_ranks(RankEnding(1, 12, None, "SIGKILL", T), RankEnding(0, 11, 1, None, T + 0.3, "SIGTERM"))
    gloo = {"type": "RuntimeError", "message": "Connection closed by peer", "traceback": ""}
    outcome = classify_ranks_end(end, {0: record("exception", 0, exception=gloo), 1: None}, None)
    assert (outcome.cause, outcome.detail, outcome.signal) == ("crash", "rank 1 killed by SIGKILL", "SIGKILL")
    # Rank 0 killed: the same, the other way round.
    end0 = two_ranks(RankEnding(0, 11, None, "SIGKILL", T), RankEnding(1, 12, 143, None, T + 0.2, "SIGTERM"))
    outcome0 = classify_ranks_end(end0, {0: None, 1: record("signal", 1, signal="SIGTERM")}, None)
    assert (outcome0.cause, outcome0.detail) == ("crash", "rank 0 killed by SIGKILL")


def test_an_exception_on_one_rank_is_named_with_its_rank() -> None:
    end = two_ranks(RankEnding(1, 12, 1, None, T), RankEnding(0, 11, None, "SIGKILL", T + 0.8, "SIGKILL"))
    boom = {"type": "InjectedFault", "message": "injected crash at global step 30", "traceback": ""}
    outcome = classify_ranks_end(end, {0: None, 1: record("exception", 1, exception=boom)}, None)
    assert (outcome.cause, outcome.detail, outcome.exit_code) == (
        "crash", "rank 1 InjectedFault: injected crash at global step 30", 1)


def test_completed_only_when_every_rank_completed() -> None:
    end = two_ranks(RankEnding(1, 12, 0, None, T), RankEnding(0, 11, 0, None, T + 1))
    done = {0: record("completed", 0, reason="max_epochs"), 1: record("completed", 1, reason="max_epochs")}
    outcome = classify_ranks_end(end, done, None)
    assert (outcome.cause, outcome.completion_reason) == ("completed", "max_epochs")
    # Rank 1 completed first, then rank 0 crashed in its teardown: rank 0 is the culprit.
    crash = {"type": "OSError", "message": "disk full", "traceback": ""}
    late = classify_ranks_end(end, {0: record("exception", 0, exception=crash), 1: done[1]}, None)
    assert (late.cause, late.detail) == ("crash", "rank 0 OSError: disk full")
    # Every rank exited 0 but one left no record.
    silent = classify_ranks_end(end, {0: done[0], 1: None}, None)
    assert (silent.cause, silent.detail) == ("crash", "rank 1 exited 0 without an exit record")


def test_config_errors_and_the_daemons_intent_win_over_rank_endings() -> None:
    end = two_ranks(RankEnding(1, 12, 2, None, T), RankEnding(0, 11, 2, None, T))
    bad = record("config_error", 1, message="x.yaml: trainer.devices: 1 device(s)")
    assert classify_ranks_end(end, {0: None, 1: bad}, None).cause == "config_error"
    stopped = two_ranks(RankEnding(0, 11, 143, None, T), RankEnding(1, 12, 143, None, T))
    signals = {0: record("signal", 0, signal="SIGTERM"), 1: record("signal", 1, signal="SIGTERM")}
    outcome = classify_ranks_end(stopped, signals, "user_stop", "stopped by the user")
    assert (outcome.cause, outcome.detail) == ("user_stop", "stopped by the user")
    assert classify_ranks_end(None, {0: None, 1: None}, None).cause == "vanished"


@pytest.mark.parametrize("exit_code,signal_name,rec", [
    (None, "SIGKILL", None),
    (1, None, ExitRecord(status="exception", time=T, pid=1, exception={"type": "E", "message": "m"})),
    (0, None, ExitRecord(status="completed", time=T, pid=1, reason="max_steps")),
    (3, None, None),
])
def test_one_rank_gives_what_classify_end_gives(exit_code: int | None, signal_name: str | None,
                                               rec: ExitRecord | None) -> None:
    end = MonitorExit(exit_code=exit_code, signal=signal_name, ended_at=T, trainer_pid=11,
                      ranks=[RankEnding(0, 11, exit_code, signal_name, T)], first_rank=0)
    plain = MonitorExit(exit_code=exit_code, signal=signal_name, ended_at=T, trainer_pid=11)
    assert classify_ranks_end(end, {0: rec}, None) == classify_end(rec, plain, None)


# --- progress for the hang clock ------------------------------------------------------------------------


def beat(rank: int, time: float, phase: str = "train", step: int = 100, max_step_time: float = 0.1) -> Heartbeat:
    return Heartbeat(pid=10 + rank, attempt=1, time=time, started_at=T, phase=phase, step=step,
                     max_step_time=max_step_time, rank=rank)


def test_the_slowest_rank_sets_the_progress() -> None:
    assert slowest_rank_heartbeat({0: beat(0, T)}, 2) is None  # rank 1 not up yet: still starting
    combined = slowest_rank_heartbeat({0: beat(0, T + 100, step=500, max_step_time=0.1),
                                       1: beat(1, T + 10, step=400, max_step_time=0.4)}, 2)
    assert combined is not None
    assert (combined.time, combined.step, combined.max_step_time, combined.rank) == (T + 10, 400, 0.4, 1)
    # One rank saving or validating: the others wait for it in a collective, which is no hang.
    saving = slowest_rank_heartbeat({0: beat(0, T + 50, phase="checkpoint"), 1: beat(1, T + 10)}, 2)
    assert saving is not None and (saving.phase, saving.time) == ("checkpoint", T + 10)


def test_a_stuck_rank_is_a_hang_even_while_another_rank_beats() -> None:
    settings = HangConfig(min_timeout=60.0)
    beats = {0: beat(0, T + 200), 1: beat(1, T + 100)}
    one_rank = check_hang(now=T + 200.5, attempt_started_at=T, heartbeat=beats[0], slowest_step_s=0.1,
                          setting="auto", settings=settings)
    assert not one_rank.hung  # rank 0 alone looks fine...
    verdict = check_hang(now=T + 200.5, attempt_started_at=T, heartbeat=slowest_rank_heartbeat(beats, 2),
                         slowest_step_s=0.1, setting="auto", settings=settings)
    assert verdict.hung and "step 100" in verdict.reason  # ...the job is not


# --- ports and the rank environment --------------------------------------------------------------------


def test_master_port_explicit_then_the_jobs_env_then_a_free_one() -> None:
    assert choose_master_port(29600, {"MASTER_PORT": "29700"}) == (29600, True)
    assert choose_master_port(None, {"MASTER_PORT": "29700"}) == (29700, True)
    port, fixed = choose_master_port(None, {})
    assert not fixed and port_is_free("127.0.0.1", port)


def test_a_fixed_port_in_use_is_waited_for() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        assert not wait_port_free("127.0.0.1", port, timeout_s=0.3, poll_s=0.05)
    assert wait_port_free("127.0.0.1", port, timeout_s=5.0, poll_s=0.05)


def test_rank_environment_is_what_lightning_reads() -> None:
    env = rank_environment(rank=3, local_rank=1, world_size=4, local_world_size=2, node_rank=1,
                           master_addr="10.0.0.1", master_port=29500)
    assert env == {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "4", "RANK": "3",
                   "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "1", "GROUP_RANK": "1"}


def test_a_trainer_reads_its_rank_from_the_launchers_environment() -> None:
    from trainer.ranks import RankInfo, rank_from_env

    assert rank_from_env({}) == RankInfo(0, 0, 1)
    assert rank_from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == RankInfo(3, 1, 4)
    assert rank_from_env({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}) == RankInfo(1, 1, 2)  # Lightning's own launcher
    assert not rank_from_env({"WORLD_SIZE": "1"}).multi
