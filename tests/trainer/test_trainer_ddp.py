"""DDP on CPU (gloo, 2 ranks): real Lightning fits of the digits example, every rank started by the attempt monitor.

Driven through ``python -m supervisor.processes.attempt_monitor`` directly (the daemon's side is wired elsewhere):
a 2-rank fit against a 1-rank fit of the same global batch; SIGKILL of rank 1 mid-fit and the resume from
best on both ranks; SIGTERM to rank 0 alone; a rank hanging in ``training_step``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from trainer_testkit import DIGITS_CONFIG, REPO, is_complete_zip, trainer_env

from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.exitrecord import ExitRecord, read_exit_record
from supervisor.jobfiles.heartbeat import Heartbeat, read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import live_checkpoints
from supervisor.jobfiles.monitorfiles import MonitorExit, MonitorStart, read_monitor_exit, read_monitor_start
from supervisor.rules.hang import check_hang
from supervisor.rules.rank_outcome import classify_ranks_end, slowest_rank_heartbeat
from supervisor.rules.resume import choose_resume
from supervisor.settings import HangConfig

pytestmark = pytest.mark.lightning

DDP = ["trainer.devices=2", "trainer.strategy=ddp", "logger.wandb.mode=disabled"]
GLOBAL_BATCH = 64
SLOW = ["model.class_path=trainer.examples.faulty.FaultyDigitsClassifier", "model.init_args.step_delay=0.05",
        "trainer.max_epochs=100"]
START_TIMEOUT = 180.0  # two ranks importing Lightning at once on a loaded 2-core box


@dataclass
class Attempt:
    """One attempt: the monitor process and the files it and its ranks write."""

    job: JobLayout
    n: int
    proc: subprocess.Popen[bytes]

    @property
    def layout(self):  # type: ignore[no-untyped-def]
        return self.job.attempt(self.n)

    def beat(self, rank: int) -> Heartbeat | None:
        return read_heartbeat(self.layout.heartbeat_of(rank))

    def record(self, rank: int) -> ExitRecord | None:
        return read_exit_record(self.layout.exit_record_of(rank))

    def started(self) -> MonitorStart:
        self.wait_for(lambda: read_monitor_start(self.layout.monitor_start) is not None, "monitor.json", 30)
        start = read_monitor_start(self.layout.monitor_start)
        assert start is not None
        return start

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"attempt ended before {what}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()}")

    def wait_for_step(self, step: int, rank: int = 0) -> None:
        def reached() -> bool:
            beat = self.beat(rank)
            return beat is not None and beat.step >= step and beat.phase == "train"
        self.wait_for(reached, f"rank {rank} at step {step}")

    def ended(self, timeout: float = 300.0) -> MonitorExit:
        try:
            assert self.proc.wait(timeout=timeout) == 0, self.output()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"attempt did not end within {timeout:.0f}s:\n{self.output()}") from None
        end = read_monitor_exit(self.layout.monitor_exit)
        assert end is not None
        return end

    def output(self) -> str:
        parts = []
        for path in sorted(self.layout.dir.glob("*.log")):
            parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


_started: list[Attempt] = []


@pytest.fixture(autouse=True, scope="module")
def _no_leftovers() -> Iterator[None]:
    yield
    for attempt in _started:  # a failed test must not leave ranks running
        start = read_monitor_start(attempt.layout.monitor_start)
        if attempt.proc.poll() is None:
            attempt.proc.kill()
            attempt.proc.wait()
        if start is not None:
            try:
                os.killpg(start.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def launch(job_root: Path, overrides: Sequence[str], *, nproc: int = 2, n: int = 1, ckpt: str | None = None,
           monitor_args: Sequence[str] = ()) -> Attempt:
    """The monitor with ``nproc`` trainer ranks, as the daemon would start attempt ``n`` of a job."""
    job = JobLayout(job_root)
    attempt_dir = job.attempt(n).dir
    attempt_dir.mkdir(parents=True, exist_ok=True)
    trainer = [sys.executable, "-m", "trainer", "--config", str(DIGITS_CONFIG), "--attempt-dir", str(attempt_dir),
               "--checkpoint-dir", str(job.checkpoints), "--attempt", str(n), "--restarts", str(n - 1)]
    if ckpt is not None:
        trainer += ["--ckpt", ckpt]
    argv = [sys.executable, "-m", "supervisor.processes.attempt_monitor", "--attempt-dir", str(attempt_dir),
            "--cwd", str(REPO),
            "--nproc-per-node", str(nproc), *monitor_args, "--", *trainer, *overrides]
    # One thread per rank: two ranks share a 2-core box with other tests.
    env = trainer_env(OMP_NUM_THREADS="1")
    with open(attempt_dir / "monitor.log", "ab") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)
    attempt = Attempt(job, n, proc)
    _started.append(attempt)
    return attempt


def records(attempt: Attempt, world_size: int = 2) -> dict[int, ExitRecord | None]:
    return {r: attempt.record(r) for r in range(world_size)}


# --- a whole fit: 2 ranks against 1 rank with the same global batch -------------------------------------


@dataclass
class Fits:
    one: Attempt
    one_end: MonitorExit
    two: Attempt
    two_end: MonitorExit


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory) -> Fits:
    root = tmp_path_factory.mktemp("ddp-fit")
    common = ["trainer.max_epochs=2", "checkpoint.every_n_train_steps=10"]
    two = launch(root / "two", [*DDP, *common, f"data.init_args.batch_size={GLOBAL_BATCH // 2}"])
    two_end = two.ended()
    one = launch(root / "one", [*common, "logger.wandb.mode=disabled", f"data.init_args.batch_size={GLOBAL_BATCH}"],
                 nproc=1)
    return Fits(one, one.ended(), two, two_end)


def test_two_ranks_complete_with_the_final_step_of_one_rank(fits: Fits) -> None:
    one, two = records(fits.one, 1)[0], records(fits.two)
    assert one is not None and one.status == "completed", fits.one.output()
    assert all(r is not None and r.status == "completed" for r in two.values()), fits.two.output()
    assert {r.global_step for r in two.values() if r} == {one.global_step} and one.global_step > 0
    assert [r.rank for r in two.values() if r] == [0, 1]
    assert [(e.rank, e.exit_code, e.stopped_by) for e in fits.two_end.ranks] == [(0, 0, None), (1, 0, None)]
    assert classify_ranks_end(fits.two_end, two, None).cause == "completed"


def test_each_rank_has_its_own_files_and_rank_0_alone_writes_checkpoints(fits: Fits) -> None:
    layout = fits.two.layout
    for rank in (0, 1):
        beat = fits.two.beat(rank)
        assert beat is not None and (beat.rank, beat.phase) == (rank, "done")
        assert layout.stacks_of(rank).exists() and layout.stderr_of(rank).exists()
    assert layout.metrics.exists() and not (layout.dir / "metrics.rank1.jsonl").exists()
    assert layout.resume_ready.exists()
    saves = [e for e in read_json_lines(fits.two.job.manifest) if e["event"] == "save"]
    assert len({(e["path"], e["step"]) for e in saves}) == len(saves) > 0  # one line per save, not one per rank
    one_saves = [e for e in read_json_lines(fits.one.job.manifest) if e["event"] == "save"]
    assert [(Path(e["path"]).name, e["step"]) for e in saves] == [(Path(e["path"]).name, e["step"])
                                                                   for e in one_saves]
    assert all(is_complete_zip(e.path) for e in live_checkpoints(fits.two.job.manifest))


# --- SIGKILL of rank 1 mid-fit, then the resume from best on both ranks -------------------------------------


def test_sigkill_of_rank_1_ends_the_attempt_at_once_and_both_ranks_resume_from_best(tmp_path: Path) -> None:
    root = tmp_path / "job"
    overrides = [*DDP, *SLOW, "checkpoint.every_n_train_steps=10", "data.init_args.batch_size=32"]
    first = launch(root, overrides)
    first.wait_for(lambda: any(e["event"] == "save" for e in read_json_lines(first.job.manifest)), "a checkpoint")
    first.wait_for_step(25)
    start = first.started()
    os.kill(start.pids()[1], signal.SIGKILL)
    end = first.ended(timeout=30)
    by_rank = {e.rank: e for e in end.ranks}
    assert (end.first_rank, by_rank[1].signal) == (1, "SIGKILL")
    # the survivor's SIGTERM grace (0.8 s) and the monitor's poll, with room for a loaded box (see
    # tests/e2e/test_ddp_supervised.py); left alone it would wait in gloo for 30 minutes
    assert by_rank[0].ended_at - by_rank[1].ended_at < 3.0, first.output()
    rank0 = first.record(0)
    assert rank0 is not None and rank0.status in ("exception", "signal"), first.output()  # rank 0 had its say
    outcome = classify_ranks_end(end, records(first), None)
    assert (outcome.cause, outcome.detail) == ("crash", "rank 1 killed by SIGKILL")
    # Never two generations: every process of attempt 1 is gone before attempt 2 starts.
    assert not [p for p in start.pids().values() if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

    choice = choose_resume(live_checkpoints(first.job.manifest), "best")
    assert choice.path is not None
    second = launch(root, [*overrides, "trainer.max_epochs=3", "model.init_args.step_delay=0"], n=2,
                    ckpt=choice.path)
    end2 = second.ended()
    done = records(second)
    assert all(r is not None and r.status == "completed" and r.global_step == 3 * 23 for r in done.values()), \
        second.output()
    assert [(e.exit_code, e.stopped_by) for e in end2.ranks] == [(0, None), (0, None)]
    for rank in (0, 1):
        beat = second.beat(rank)
        assert beat is not None and "checkpoint_loaded" in beat.marks  # both ranks restored the checkpoint


# --- SIGTERM to rank 0 alone (what the daemon sends today) --------------------------------------------------


def test_sigterm_to_one_rank_stops_both_with_one_complete_checkpoint(tmp_path: Path) -> None:
    attempt = launch(tmp_path / "job", [*DDP, *SLOW, "checkpoint.every_n_train_steps=1000",
                                        "data.init_args.batch_size=32"])
    attempt.wait_for_step(12)
    start = attempt.started()
    os.kill(start.pids()[0], signal.SIGTERM)
    end = attempt.ended(timeout=120)
    assert [(e.exit_code, e.stopped_by) for e in end.ranks] == [(143, None), (143, None)], attempt.output()
    done = records(attempt)
    assert all(r is not None and (r.status, r.signal) == ("signal", "SIGTERM") for r in done.values()), \
        attempt.output()
    rank0, rank1 = done[0], done[1]
    assert rank0 is not None and rank1 is not None
    assert rank0.global_step == rank1.global_step  # both stopped at the same batch boundary
    saves = [e for e in read_json_lines(attempt.job.manifest) if e["event"] == "save"]
    signal_saves = [e for e in saves if e["kind"] == "signal"]
    assert len(signal_saves) == 1 and signal_saves[0]["step"] == rank0.global_step
    assert rank0.checkpoint == signal_saves[0]["path"] and is_complete_zip(rank0.checkpoint)
    assert all(is_complete_zip(e["path"]) for e in saves)


# --- a rank hanging in training_step ----------------------------------------------------------------------


def test_a_rank_hanging_in_training_step_stops_every_rank_and_both_stacks_are_saved(tmp_path: Path) -> None:
    attempt = launch(tmp_path / "job", [*DDP, *SLOW, "model.init_args.hang_at_step=20",
                                        "model.init_args.fault_on_rank=1", "data.init_args.batch_size=32"])
    attempt.wait_for_step(10, rank=1)  # (beats are throttled: not every step is written)
    start = attempt.started()
    # Rank 1 gets stuck at step 20 and rank 0 waits for it in the gradient all-reduce: wait (however slow the
    # box) until neither rank has written a beat for 5 s, more than the 4 s hang setting judged below.
    seen: dict[str, Any] = {"beats": None, "since": time.monotonic()}

    def quiet_for_5s() -> bool:
        beats = {r: attempt.beat(r) for r in (0, 1)}
        if beats != seen["beats"]:
            seen.update(beats=beats, since=time.monotonic())
        return time.monotonic() - seen["since"] >= 5.0

    attempt.wait_for(quiet_for_5s, "both ranks without a new beat for 5 s", timeout=180)
    beats = {r: attempt.beat(r) for r in (0, 1)}
    assert beats == seen["beats"]
    combined = slowest_rank_heartbeat(beats, 2)
    assert combined is not None and 10 <= combined.step <= 20
    verdict = check_hang(now=time.time(), attempt_started_at=start.started_at, heartbeat=combined,
                         slowest_step_s=None, setting="4s", settings=HangConfig())
    assert verdict.hung, verdict.reason

    os.kill(attempt.proc.pid, signal.SIGUSR2)  # the monitor passes it to every rank: faulthandler dumps
    for rank, where in ((0, "pytorch_lightning"), (1, "_block_forever")):
        path = attempt.layout.stacks_of(rank)
        attempt.wait_for(lambda p=path, w=where: w in p.read_text(errors="replace"), f"rank {rank}'s stacks", 30)

    os.kill(start.pids()[1], signal.SIGKILL)  # what the daemon's stop comes to for a rank that cannot act
    end = attempt.ended(timeout=30)
    by_rank = {e.rank: e for e in end.ranks}
    # rank 0 (stuck in the all-reduce) was ended by the monitor after rank 1's death, not by its own timeout
    assert by_rank[0].stopped_by in ("SIGTERM", "SIGKILL") and by_rank[0].ended_at >= by_rank[1].ended_at
    assert classify_ranks_end(end, records(attempt), "hang", "hang: no progress").cause == "hang"
