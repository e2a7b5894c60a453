"""The standby's handover, rank by rank: the environment it applies, the job's lock it takes (real flocks), the
fixed port it waits for (a real socket holds it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.jobfiles.standbyfiles import LOCK_FD_ENV, READY_FILE, ready_file_name
from supervisor.processes.control import try_lock
from supervisor.processes.ports import DEFAULT_PORT_WAIT_S
from supervisor.processes.rank_group import rank_environment
from supervisor.runners import standby as standby_module
from supervisor.runners.base import AttemptSpec, LaunchRefused
from trainer.standby import RANK_ENV_KEYS, Handover, apply_handover_environment, inherited_lock_fd


def test_the_rank_variables_kept_are_every_one_the_monitor_sets_but_the_port() -> None:
    given = rank_environment(rank=1, local_rank=1, world_size=2, local_world_size=2, node_rank=0,
                             master_addr="127.0.0.1", master_port=1)
    assert set(RANK_ENV_KEYS) == set(given) - {"MASTER_PORT"}


def test_the_handover_environment_never_overwrites_the_ranks_own_variables() -> None:
    environ = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "KEEP": "x"}
    # The attempt's environment is the daemon's plus the job's: one a launcher started with its own RANK.
    handover = Handover(argv=[], env={"RANK": "0", "WORLD_SIZE": "1", "ML_SUPERVISOR_ATTEMPT": "2",
                                      "MASTER_PORT": "1111"}, lock_path="", master_port=29517)
    apply_handover_environment(handover, environ)
    assert environ == {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "KEEP": "x",
                       "ML_SUPERVISOR_ATTEMPT": "2", "MASTER_PORT": "29517"}


def test_a_one_rank_handover_leaves_the_port_as_the_attempt_has_it() -> None:
    environ: dict[str, str] = {}
    apply_handover_environment(Handover(argv=[], env={"A": "1"}, lock_path=""), environ)
    assert environ == {"A": "1"}


def test_ready_files_one_per_rank_and_the_plain_name_only_for_one_rank() -> None:
    assert ready_file_name(0, 1) == READY_FILE
    assert [ready_file_name(r, 2) for r in (0, 1)] == ["standby-ready.rank0.json", "standby-ready.rank1.json"]


SHARED_LOCK = """
import os, sys
from trainer.standby import take_lock
fd = int(sys.argv[2])
print("locked" if take_lock(sys.argv[1], wait_s=float(sys.argv[3]), fd=fd) else "held", flush=True)
sys.stdin.read()  # hold it until the test closes our stdin
"""


def _rank(lock: Path, fd: int, wait_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", SHARED_LOCK, str(lock), str(fd), str(wait_s)], pass_fds=(fd,),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


def test_ranks_sharing_one_open_lock_file_all_hold_it_and_exclude_every_other_holder(tmp_path: Path) -> None:
    lock = tmp_path / "job.lock"
    previous = try_lock(lock)  # the previous attempt's monitor
    assert previous is not None
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)  # what the daemon opens for the standby
    try:
        waiting = _rank(lock, fd, 0.3)
        assert waiting.communicate("")[0].strip() == "held"  # the previous attempt lives: no rank may fit
        os.close(previous)
        ranks = [_rank(lock, fd, 5.0) for _ in range(2)]
        assert [r.stdout.readline().strip() for r in ranks if r.stdout] == ["locked", "locked"]  # both at once
        assert try_lock(lock) is None  # held by the ranks' open file: a cold launch now would be refused
        for rank in ranks:
            rank.communicate("")
    finally:
        os.close(fd)
    assert try_lock(lock) is not None  # every holder gone: free


def test_only_an_inherited_fd_of_the_lock_file_itself_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock, other = tmp_path / "job.lock", tmp_path / "other"
    lock.touch()
    other.touch()
    right, wrong = os.open(lock, os.O_RDWR), os.open(other, os.O_RDWR)
    try:
        monkeypatch.setenv(LOCK_FD_ENV, str(right))
        assert inherited_lock_fd(str(lock)) == right
        monkeypatch.setenv(LOCK_FD_ENV, str(wrong))
        assert inherited_lock_fd(str(lock)) is None
        monkeypatch.setenv(LOCK_FD_ENV, "not a number")
        assert inherited_lock_fd(str(lock)) is None
    finally:
        os.close(right)
        os.close(wrong)


def test_a_fixed_port_held_at_a_promotion_is_waited_for_then_fails_the_launch_then_is_waited_for_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    spec = AttemptSpec(job_id="j", attempt=2, command=("python", "-m", "trainer"), env={"MASTER_PORT": str(port)},
                       workdir=str(tmp_path), attempt_dir=tmp_path / "a2", lock_path=tmp_path / "lock")
    runner = standby_module.StandbyLocalRunner(tmp_path, lambda notice: None, watch_exits=False)
    clock = [1000.0]
    monkeypatch.setattr(standby_module.time, "monotonic", lambda: clock[0])
    try:
        refusals = []
        for waited in (0.0, DEFAULT_PORT_WAIT_S - 1, DEFAULT_PORT_WAIT_S, DEFAULT_PORT_WAIT_S + 1):
            clock[0] = 1000.0 + waited
            with pytest.raises(LaunchRefused) as refused:
                runner._master_port(spec)
            refusals.append((refused.value.retry, refused.value.reason))
        assert refusals == [(True, f"MASTER_PORT {port} is still in use")] * 2 + [
            (False, f"MASTER_PORT {port} is still in use after {DEFAULT_PORT_WAIT_S:.0f}s"),
            (True, f"MASTER_PORT {port} is still in use")]  # the launch after the back-off waits again
        held.close()
        assert runner._master_port(spec) == port  # free: the attempt gets it
    finally:
        held.close()
        runner.close()
