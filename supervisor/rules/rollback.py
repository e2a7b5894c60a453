"""After a divergence: which checkpoint the next attempt rolls back to, and what it changes (pure).

The next attempt resumes from the newest checkpoint with finite metrics saved
strictly before the first bad step (less ``rollback_margin_steps``), whatever
``resume_from`` says: the best one may be newer than the weights that went bad.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from supervisor.jobfiles.manifest import CheckpointEntry, rank_newest
from supervisor.rules.resume import ResumeChoice, choose_resume, verify_checkpoint


@dataclass(frozen=True)
class Rollback:
    """A rollback attempt: resume before ``before_step``; drop ``skip_batches`` batches; scale the rates once."""

    diverged_at: int
    before_step: int
    skip_batches: int = 0
    lr_scale: float = 1.0

    def trainer_args(self) -> list[str]:
        """What the trainer's command line adds for it."""
        args: list[str] = []
        if self.skip_batches:
            args += ["--skip-batches", str(self.skip_batches)]
        if self.lr_scale != 1.0:
            args += ["--lr-scale", repr(self.lr_scale)]
        return args


def rollback_after(diverged_at: int | None, divergence: Mapping[str, Any]) -> Rollback | None:
    """The rollback that follows an attempt whose loss diverged at ``diverged_at`` (None: it did not)."""
    if diverged_at is None:
        return None
    margin = int(divergence["rollback_margin_steps"])
    return Rollback(diverged_at=diverged_at, before_step=max(0, diverged_at - margin),
                    skip_batches=int(divergence["skip_batches"]), lr_scale=float(divergence["lr_scale"]))


def choose_rollback(entries: Sequence[CheckpointEntry], before_step: int,
                    verify: Callable[[CheckpointEntry], str | None] = verify_checkpoint) -> ResumeChoice:
    """The newest finite checkpoint saved before ``before_step`` that ``verify`` accepts (else from scratch)."""
    rule = f"rollback: newest before step {before_step}"
    skipped: list[tuple[str, str]] = []
    for entry in rank_newest(entries):
        if entry.step >= before_step:
            continue  # not a candidate at all: it may hold the weights that went bad
        why = "non-finite metrics" if not entry.finite else verify(entry)
        if why is None:
            return ResumeChoice(entry.path, entry, rule, tuple(skipped))
        skipped.append((entry.path, why))
    return ResumeChoice(None, None, "scratch (no checkpoint before the divergence)", tuple(skipped))


def next_resume(entries: Sequence[CheckpointEntry], resume_from: str, rollback: Rollback | None,
                verify: Callable[[CheckpointEntry], str | None] = verify_checkpoint) -> ResumeChoice:
    """The checkpoint the next attempt takes: a rollback's, else ``resume_from``'s rule."""
    if rollback is not None:
        return choose_rollback(entries, rollback.before_step, verify)
    return choose_resume(entries, resume_from, verify)
