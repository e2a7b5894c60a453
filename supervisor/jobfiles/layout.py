"""Where each file of a job lives. One place, so both sides agree on every path.

    <state>/jobs/<job-id>/config.yaml                  resolved config, frozen at submit
    <state>/jobs/<job-id>/job.lock                     flock held by the live attempt's monitor
    <state>/jobs/<job-id>/checkpoints/                 ModelCheckpoint dirpath
    <state>/jobs/<job-id>/checkpoints/manifest.jsonl   every save, removal and abandonment
    <state>/jobs/<job-id>/checkpoints/abandoned/<n>/   checkpoints of abandoned timelines
    <state>/jobs/<job-id>/wandb/                       W&B files of the job's one run
    <state>/jobs/<job-id>/attempts/<n>/                one directory per attempt (see AttemptLayout)

A multi-rank attempt (DDP, one process per rank) keeps rank 0's files at the
names a single-process attempt uses and gives every other rank its own copy
with ``.rank<N>`` before the extension: ``heartbeat.rank1.json``,
``exit.rank1.json``, ``stacks.rank1.txt``, ``stdout.rank1.log``. Readers that
know nothing of ranks see rank 0, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Exit codes of the trainer process. A signal exit is 128 + the signal number.
EXIT_COMPLETED = 0
EXIT_EXCEPTION = 1
EXIT_CONFIG_ERROR = 2
EXIT_DIVERGED = 3  # the loss diverged (trainer/divergence.py); the daemon rolls back
# In a rollback attempt's dir: the batches it skipped and the rate scale it applied (trainer/callbacks/divergence.py).
ROLLBACK_FILE = "rollback.json"


def per_rank_name(name: str, rank: int) -> str:
    """``name`` for global rank ``rank``: unchanged for rank 0, ``heartbeat.rank1.json`` for rank 1."""
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    if rank == 0:
        return name
    stem, dot, ext = name.partition(".")
    return f"{stem}.rank{rank}{dot}{ext}"


@dataclass(frozen=True)
class AttemptLayout:
    """The files of one attempt (rank 0's, or the single process's; ``*_of(rank)`` for the others)."""

    dir: Path

    @property
    def stdout(self) -> Path:
        return self.dir / "stdout.log"

    @property
    def stderr(self) -> Path:
        return self.dir / "stderr.log"

    @property
    def heartbeat(self) -> Path:
        """Written by the trainer: progress (see ``heartbeat.py``)."""
        return self.dir / "heartbeat.json"

    @property
    def exit_record(self) -> Path:
        """Written by the trainer: how the attempt ended, as it saw it (``exitrecord.py``)."""
        return self.dir / "exit.json"

    @property
    def metrics(self) -> Path:
        """Written by the trainer: one line of logged metrics per heartbeat (live curves)."""
        return self.dir / "metrics.jsonl"

    @property
    def stacks(self) -> Path:
        """Written by the trainer on SIGUSR2: every thread's stack (faulthandler)."""
        return self.dir / "stacks.txt"

    @property
    def resume_ready(self) -> Path:
        """Written by the trainer's rank 0 once the manifest is rewound for the resume; other ranks wait for it."""
        return self.dir / "resume-ready.json"

    def heartbeat_of(self, rank: int) -> Path:
        """Rank ``rank``'s heartbeat (rank 0: ``heartbeat.json``)."""
        return self.dir / per_rank_name(self.heartbeat.name, rank)

    def exit_record_of(self, rank: int) -> Path:
        """Rank ``rank``'s exit record (rank 0: ``exit.json``)."""
        return self.dir / per_rank_name(self.exit_record.name, rank)

    def stacks_of(self, rank: int) -> Path:
        """Rank ``rank``'s stack dumps (rank 0: ``stacks.txt``)."""
        return self.dir / per_rank_name(self.stacks.name, rank)

    def stdout_of(self, rank: int) -> Path:
        return self.dir / per_rank_name(self.stdout.name, rank)

    def stderr_of(self, rank: int) -> Path:
        return self.dir / per_rank_name(self.stderr.name, rank)

    @property
    def monitor_start(self) -> Path:
        """Written by the attempt monitor when the trainer started: pids (per rank), boot id (``monitorfiles.py``)."""
        return self.dir / "monitor.json"

    @property
    def monitor_exit(self) -> Path:
        """Written by the attempt monitor when the trainer's whole tree is gone: exit status (per rank)."""
        return self.dir / "monitor-exit.json"


@dataclass(frozen=True)
class JobLayout:
    """The files of one job."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def lock(self) -> Path:
        return self.root / "job.lock"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def manifest(self) -> Path:
        return self.checkpoints / "manifest.jsonl"

    @property
    def wandb_dir(self) -> Path:
        return self.root / "wandb"

    @property
    def attempts(self) -> Path:
        return self.root / "attempts"

    def attempt(self, n: int) -> AttemptLayout:
        return AttemptLayout(self.attempts / str(n))


def manifest_path(checkpoint_dir: str | Path) -> Path:
    """The manifest that sits beside the checkpoints of ``checkpoint_dir``."""
    return Path(checkpoint_dir) / "manifest.jsonl"
