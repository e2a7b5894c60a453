"""The attempt monitor with several ranks, on real processes and real signals (stand-in ranks, no torch).

The Lightning side of the same story is tests/trainer/test_trainer_ddp.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from supervisor.jobfiles.layout import AttemptLayout
from supervisor.jobfiles.monitorfiles import MonitorExit, MonitorStart, read_monitor_exit, read_monitor_start
from supervisor.processes.stacks import dump_stacks

REPO = Path(__file__).resolve().parents[2]
FAKE_RANK = REPO / "tests" / "support" / "fake_rank.py"


@dataclass
class Monitor:
    proc: subprocess.Popen[bytes]
    layout: AttemptLayout

    def started(self, ranks: int = 2, timeout: float = 20.0) -> MonitorStart:
        """monitor.json, once every rank has also written its environment file."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            start = read_monitor_start(self.layout.monitor_start)
            if start is not None and all((self.layout.dir / f"env.rank{r}.json").exists() for r in range(ranks)):
                return start
            assert self.proc.poll() is None, self.log()
            time.sleep(0.01)
        raise AssertionError(f"ranks did not start:\n{self.log()}")

    def env(self, rank: int) -> dict[str, Any]:
        return json.loads((self.layout.dir / f"env.rank{rank}.json").read_text())

    def ended(self, timeout: float = 20.0) -> MonitorExit:
        assert self.proc.wait(timeout=timeout) == 0, self.log()
        end = read_monitor_exit(self.layout.monitor_exit)
        assert end is not None
        return end

    def log(self) -> str:
        path = self.layout.dir / "monitor.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def monitors() -> Iterator[list[Monitor]]:
    started: list[Monitor] = []
    yield started
    for m in started:  # a failed test must not leave ranks behind
        start = read_monitor_start(m.layout.monitor_start)
        if m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait()
        if start is not None:
            try:
                os.killpg(start.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_monitor(monitors: list[Monitor], attempt_dir: Path, rank_args: Sequence[str] = (), *,
                  nproc: int = 2, monitor_args: Sequence[str] = (), env: dict[str, str] | None = None) -> Monitor:
    attempt_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "supervisor.processes.attempt_monitor", "--attempt-dir", str(attempt_dir),
            "--cwd", str(REPO),
            "--nproc-per-node", str(nproc), *monitor_args, "--", sys.executable, str(FAKE_RANK), str(attempt_dir),
            *rank_args]
    with open(attempt_dir / "monitor.log", "ab") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=env or dict(os.environ), stdout=log, stderr=log,
                                start_new_session=True)
    monitor = Monitor(proc, AttemptLayout(attempt_dir))
    monitors.append(monitor)
    return monitor


def test_every_rank_is_a_direct_child_with_its_env_and_a_killed_rank_ends_the_rest_at_once(
        tmp_path: Path, monitors: list[Monitor]) -> None:
    m = start_monitor(monitors, tmp_path / "a")
    start = m.started()
    assert start.world_size == 2 and [r.rank for r in start.ranks] == [0, 1]
    for r in start.ranks:
        env = m.env(r.rank)
        assert (env["pid"], env["ppid"], env["pgid"]) == (r.pid, m.proc.pid, start.pgid)
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["NODE_RANK"]) == (
            str(r.rank), str(r.local_rank), "2", "0")
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", str(start.master_port))
    assert start.trainer_pid == start.pgid == start.pids()[0]

    os.kill(start.pids()[1], signal.SIGKILL)
    end = m.ended()
    by_rank = {e.rank: e for e in end.ranks}
    assert (end.first_rank, end.signal, end.exit_code) == (1, "SIGKILL", None)
    assert (by_rank[1].signal, by_rank[1].stopped_by) == ("SIGKILL", None)
    # Rank 0 got the graceful stop, acted on it, and was gone before the grace ran out (else the monitor's
    # last signal to it would be SIGKILL), after rank 1's death.
    assert (by_rank[0].exit_code, by_rank[0].stopped_by) == (143, "SIGTERM")
    assert (tmp_path / "a" / "term.rank0").exists()
    assert by_rank[0].ended_at >= by_rank[1].ended_at
    assert end.ended_at == by_rank[0].ended_at


def test_a_rank_that_ignores_the_stop_is_killed_after_the_short_grace(
        tmp_path: Path, monitors: list[Monitor]) -> None:
    m = start_monitor(monitors, tmp_path / "a", ["--on-term", "ignore"])
    start = m.started()
    os.kill(start.pids()[0], signal.SIGKILL)  # rank 0 this time
    end = m.ended()
    by_rank = {e.rank: e for e in end.ranks}
    assert end.first_rank == 0
    assert (by_rank[1].signal, by_rank[1].stopped_by) == ("SIGKILL", "SIGKILL")
    assert by_rank[1].ended_at - by_rank[0].ended_at > 0.7  # killed only once the default 0.8 s grace ran out


def test_sigterm_to_the_monitor_reaches_every_rank_and_a_slow_graceful_rank_is_not_cut_short(
        tmp_path: Path, monitors: list[Monitor]) -> None:
    m = start_monitor(monitors, tmp_path / "a", ["--on-term", "slow-exit"])
    m.started()
    os.kill(m.proc.pid, signal.SIGTERM)
    end = m.ended()
    assert [(e.exit_code, e.stopped_by) for e in end.ranks] == [(143, None), (143, None)]
    assert all((tmp_path / "a" / f"term.rank{r}").exists() for r in (0, 1))


def test_a_rank_that_completes_first_gives_the_others_time_to_finish(
        tmp_path: Path, monitors: list[Monitor]) -> None:
    # Both complete, 1.5 s apart (rank 0 finishing W&B, say): nobody is stopped.
    m = start_monitor(monitors, tmp_path / "a", ["--exit-after", "1.5"], monitor_args=["--rank-exit-grace", "10"])
    m.started()
    end = m.ended()
    assert [(e.exit_code, e.signal, e.stopped_by) for e in end.ranks] == [(0, None, None), (0, None, None)]
    # A rank that crashes (exit 1) ends the others at once.
    m2 = start_monitor(monitors, tmp_path / "b", ["--exit-after", "1", "--code", "1", "--only-rank", "2"], nproc=3,
                       monitor_args=["--rank-exit-grace", "120"])
    m2.started(ranks=3)
    end2 = m2.ended()
    by_rank = {e.rank: e for e in end2.ranks}
    assert (end2.first_rank, by_rank[2].exit_code, by_rank[2].stopped_by) == (2, 1, None)
    assert [(by_rank[r].exit_code, by_rank[r].stopped_by) for r in (0, 1)] == [(143, "SIGTERM")] * 2
    # at once, not after the 120 s a completed rank would give them (a loaded box takes seconds, not minutes)
    assert max(e.ended_at for e in end2.ranks) - by_rank[2].ended_at < 60


def test_a_fixed_master_port_still_in_use_is_waited_for(tmp_path: Path, monitors: list[Monitor]) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    m = start_monitor(monitors, tmp_path / "a", env=dict(os.environ, MASTER_PORT=str(port)))
    time.sleep(1.0)
    assert read_monitor_start(m.layout.monitor_start) is None  # waiting, not failing
    listener.close()
    start = m.started()
    assert start.master_port == port and m.env(1)["MASTER_PORT"] == str(port)
    os.kill(m.proc.pid, signal.SIGTERM)
    m.ended()


def test_one_rank_is_started_as_before_without_a_rank_environment(tmp_path: Path, monitors: list[Monitor]) -> None:
    m = start_monitor(monitors, tmp_path / "a", ["--exit-after", "0.2", "--code", "3"], nproc=1,
                      env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT")})
    start = m.started(ranks=1)
    assert start.world_size == 1 and start.master_port is None
    assert m.env(0)["WORLD_SIZE"] is None and m.env(0)["RANK"] is None
    end = m.ended()
    raw = json.loads(m.layout.monitor_exit.read_text())
    assert (raw["exit_code"], raw["signal"], raw["trainer_pid"]) == (3, None, start.trainer_pid)
    assert end.ranks[0].exit_code == 3
    assert (m.layout.dir / "stdout.log").exists() and not (m.layout.dir / "stdout.rank1.log").exists()


def test_stacks_of_every_rank_through_the_monitor_or_one_rank_at_a_time(
        tmp_path: Path, monitors: list[Monitor]) -> None:
    m = start_monitor(monitors, tmp_path / "a")
    start = m.started()
    os.kill(m.proc.pid, signal.SIGUSR2)  # forwarded to both ranks
    for rank in (0, 1):
        path = m.layout.stacks_of(rank)
        deadline = time.monotonic() + 10
        while "fake_rank.py" not in (path.read_text() if path.exists() else ""):
            assert time.monotonic() < deadline, f"no stacks from rank {rank}"
            time.sleep(0.02)
    before = m.layout.stacks_of(1).stat().st_size
    written = dump_stacks(start.pids()[1], m.layout.dir, timeout_s=5, rank=1)
    assert m.layout.stacks_of(1) in written and m.layout.stacks_of(1).stat().st_size > before
    assert read_monitor_exit(m.layout.monitor_exit) is None  # SIGUSR2 stopped nothing
    os.kill(m.proc.pid, signal.SIGTERM)
    assert all(e.exit_code == 143 for e in m.ended().ranks)
