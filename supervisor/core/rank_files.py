"""Read a multi-rank attempt's per-rank files as the core needs them: exit records, one heartbeat.

The pure decisions live in ``rank_outcome``; this module only reads every
rank's file (``layout.py`` names them) and hands them over. With one rank it
reads exactly the files a single-process attempt has.
"""

from __future__ import annotations

from supervisor.jobfiles.exitrecord import ExitRecord, read_exit_record
from supervisor.jobfiles.heartbeat import Heartbeat, read_heartbeat
from supervisor.jobfiles.layout import AttemptLayout
from supervisor.rules.rank_outcome import slowest_rank_heartbeat


def rank_exit_records(layout: AttemptLayout, world_size: int) -> dict[int, ExitRecord | None]:
    """Rank -> its exit record (None: it wrote none)."""
    return {rank: read_exit_record(layout.exit_record_of(rank)) for rank in range(max(1, world_size))}


def diverged_at(layout: AttemptLayout, world_size: int) -> int | None:
    """The first bad step of an attempt whose loss diverged (the lowest any rank recorded), else None."""
    steps = [r.diverged_at for r in rank_exit_records(layout, world_size).values() if r is not None]
    known = [step for step in steps if step is not None]
    return min(known) if known else None


def attempt_heartbeat(layout: AttemptLayout, world_size: int) -> Heartbeat | None:
    """The heartbeat the hang clock reads: rank 0's for one rank, the slowest rank's for several."""
    if world_size <= 1:
        return read_heartbeat(layout.heartbeat)
    beats = {rank: read_heartbeat(layout.heartbeat_of(rank)) for rank in range(world_size)}
    return slowest_rank_heartbeat(beats, world_size)
