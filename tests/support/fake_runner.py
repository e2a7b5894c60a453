"""A fake attempt runner and a hand-driven clock: the core in-process, with no process and no wall-clock wait.

The runner keeps each attempt in memory; a test moves it through its phases
(``start``, ``end``) and reads what the core asked of it (``calls``). The
trainer's own files (exit record, heartbeat) are real files the test writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.jobfiles.monitorfiles import MonitorExit, RankEnding
from supervisor.runners.base import (
    AttemptRef,
    AttemptSpec,
    LaunchRefused,
    Observation,
    OrphanCheck,
    Phase,
    RunnerNotice,
    RunnerState,
)


class FakeClock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeAttempt:
    spec: AttemptSpec | None
    phase: Phase = Phase.PENDING
    exit: MonitorExit | None = None
    pid: int | None = None
    boot_id: str | None = None
    adopted: bool = False


@dataclass
class FakeRunner:
    """An ``AttemptRunner`` whose attempts are entries in a dict, keyed by (job id, attempt)."""

    notify: object = None
    kind: str = "fake"
    attempts: dict[tuple[str, int], FakeAttempt] = field(default_factory=dict)
    calls: list[tuple[str, str, int]] = field(default_factory=list)  # (operation, job id, attempt)
    refuse: LaunchRefused | None = None
    forgotten: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    closed: bool = False
    next_pid: int = 4000

    # -- driven by the test ---------------------------------------------------------------------------
    def start(self, job_id: str, n: int) -> None:
        """The attempt's trainer started."""
        self.next_pid += 1
        attempt = self.attempts[(job_id, n)]
        attempt.phase, attempt.pid = Phase.RUNNING, self.next_pid

    def end(self, job_id: str, n: int, *, exit_code: int | None = 0, signal: str | None = None,
            ended_at: float = 0.0, vanished: bool = False, ranks: Sequence[RankEnding] = ()) -> None:
        """The attempt's processes ended (``vanished``: without any exit status); ``ranks``: every rank's
        ending, the first one listed first (a multi-rank attempt's ``monitor-exit.json``)."""
        attempt = self.attempts[(job_id, n)]
        attempt.phase = Phase.ENDED
        first = ranks[0] if ranks else None
        attempt.exit = None if vanished else MonitorExit(
            exit_code=first.exit_code if first else exit_code, signal=first.signal if first else signal,
            ended_at=ended_at, world_size=max(1, len(ranks)), first_rank=first.rank if first else None,
            ranks=list(ranks))
        if callable(self.notify):
            self.notify(RunnerNotice(job_id, "ended"))

    def ops(self, operation: str) -> list[tuple[str, int]]:
        return [(job, n) for op, job, n in self.calls if op == operation]

    # -- the AttemptRunner interface ------------------------------------------------------------------
    def launch(self, spec: AttemptSpec) -> RunnerState:
        if self.refuse is not None:
            raise self.refuse
        self.calls.append(("launch", spec.job_id, spec.attempt))
        self.attempts[(spec.job_id, spec.attempt)] = FakeAttempt(spec)
        return {"fake_attempt": spec.attempt}

    def adopt(self, ref: AttemptRef) -> Observation:
        self.calls.append(("adopt", ref.job_id, ref.attempt))
        self.attempts[(ref.job_id, ref.attempt)].adopted = True
        return self.observe(ref)

    def observe(self, ref: AttemptRef) -> Observation:
        attempt = self.attempts.get((ref.job_id, ref.attempt))
        if attempt is None:  # unknown to this runner: gone without a word
            return Observation(Phase.ENDED, dict(ref.state))
        state = {**ref.state, "pid": attempt.pid}
        return Observation(attempt.phase, state, attempt.exit, attempt.pid, attempt.boot_id)

    def graceful_stop(self, ref: AttemptRef) -> None:
        self.calls.append(("graceful_stop", ref.job_id, ref.attempt))

    def request_checkpoint(self, ref: AttemptRef) -> bool:
        self.calls.append(("request_checkpoint", ref.job_id, ref.attempt))
        return True

    def dump_stacks(self, ref: AttemptRef, timeout_s: float) -> list[Path]:
        self.calls.append(("dump_stacks", ref.job_id, ref.attempt))
        path = ref.attempt_dir / "stacks.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("Thread 0x1 (most recent call first):\n")
        return [path]

    def kill(self, ref: AttemptRef) -> list[int]:
        self.calls.append(("kill", ref.job_id, ref.attempt))
        attempt = self.attempts.get((ref.job_id, ref.attempt))
        return [attempt.pid] if attempt is not None and attempt.pid else []

    def clean_orphans(self, gpus: Sequence[int], earlier: Sequence[AttemptRef]) -> OrphanCheck:
        return OrphanCheck(ok=True)

    def forget(self, job_id: str) -> None:
        self.forgotten.append(job_id)

    def release(self, job_id: str) -> None:
        self.released.append(job_id)

    def tick(self) -> None:
        self.calls.append(("tick", "", 0))

    def close(self) -> None:
        self.closed = True
