"""A multi-rank attempt seen as one: its cause and detail, and its progress for the hang clock (pure).

The attempt monitor records how every rank ended and which ended first
(``monitor-exit.json``); every rank writes its own exit record and heartbeat.
In DDP the first rank to fail is the cause: the others then fail in their next
collective or are stopped by the monitor, and blaming them would name the
wrong process. So:

- the attempt completed only when every rank's exit record says so;
- a config error on any rank, then the daemon's own stop intent, win as in
  ``outcome.classify_end``;
- otherwise the culprit is the first rank, in the order they ended, that did
  not complete, and the detail names it: ``rank 1 killed by SIGKILL``.

A single-rank attempt gives exactly what ``classify_end`` gives.

Progress: the job moves as fast as its slowest rank (the others wait for it in
the next collective), so the hang clock reads one combined heartbeat: the
stalest rank's time, the lowest step, the slowest step time seen on any rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from supervisor.jobfiles.exitrecord import ExitRecord
from supervisor.jobfiles.heartbeat import Heartbeat
from supervisor.jobfiles.monitorfiles import MonitorExit, RankEnding
from supervisor.rules.causes import Cause
from supervisor.rules.outcome import Outcome, classify_end

# Phases that get a generous allowance in ``hang.py``; one rank in them makes every other rank wait legitimately.
_WAITING_PHASES = ("setup", "checkpoint", "validate", "done")


def classify_ranks_end(monitor_exit: MonitorExit | None, records: Mapping[int, ExitRecord | None],
                       intent: Cause | None, intent_detail: str | None = None) -> Outcome:
    """The attempt's cause and detail from every rank's ending and exit record (``records``: rank -> record)."""
    world_size = monitor_exit.world_size if monitor_exit is not None else max(1, len(records))
    if world_size <= 1:
        return classify_end(records.get(0), monitor_exit, intent, intent_detail)
    ranks = range(world_size)
    first_exit = _first_ending(monitor_exit)
    exit_code = first_exit.exit_code if first_exit else None
    signal_name = first_exit.signal if first_exit else None
    if all(_completed(records.get(r)) for r in ranks):
        reason = records[0].reason if records.get(0) is not None else None  # type: ignore[union-attr]
        return Outcome(Cause.COMPLETED, f"completed ({reason or 'finished'})", exit_code, signal_name,
                       completion_reason=reason)
    for rank in ranks:
        record = records.get(rank)
        if record is not None and record.status == "config_error":
            return Outcome(Cause.CONFIG_ERROR, record.message or "config error", exit_code, signal_name)
    diverged = [rec for rec in (records.get(r) for r in ranks) if rec is not None and rec.status == "diverged"]
    if diverged:  # every rank stops at the agreed step; the rank whose own loss diverged says what happened
        own = next((rec for rec in diverged if (rec.divergence or {}).get("check") != "rank"), diverged[0])
        return classify_end(own, monitor_exit, None)
    if intent:
        return Outcome(Cause(intent), intent_detail or intent.replace("_", " "), exit_code, signal_name)
    if monitor_exit is None:
        return Outcome(Cause.VANISHED, "the attempt's monitor vanished without an exit status", None, None)
    if monitor_exit.error:
        return Outcome(Cause.CRASH, monitor_exit.error, exit_code, signal_name)
    culprit = next((e for e in _in_end_order(monitor_exit) if not _completed(records.get(e.rank))), None)
    if culprit is None:  # every rank that ended completed, yet some rank has no completed record
        missing = next(r for r in ranks if not _completed(records.get(r)))
        return Outcome(Cause.CRASH, f"rank {missing} ended without an exit record", exit_code, signal_name)
    one = classify_end(records.get(culprit.rank), MonitorExit(exit_code=culprit.exit_code, signal=culprit.signal,
                                                           ended_at=culprit.ended_at, trainer_pid=culprit.pid), None)
    return Outcome(one.cause, f"rank {culprit.rank} {one.detail}", one.exit_code, one.signal)


def slowest_rank_heartbeat(beats: Mapping[int, Heartbeat | None], world_size: int) -> Heartbeat | None:
    """One heartbeat for the hang clock of a ``world_size``-rank attempt (``beats``: rank -> last beat).

    ``None`` while any rank has no beat yet: the attempt is still starting (the
    startup allowance applies). Otherwise the stalest rank's beat, with the
    lowest step and the slowest step time of any rank; its phase is that of a
    rank in setup, checkpoint, validate or done if there is one (the others
    wait for it in a collective, which is no hang).
    """
    present = [beats.get(r) for r in range(max(1, world_size))]
    if any(b is None for b in present):
        return None
    ready: list[Heartbeat] = [b for b in present if b is not None]
    stalest = min(ready, key=lambda b: b.time)
    step_times = [b.max_step_time for b in ready if b.max_step_time is not None]
    phase = next((p for p in _WAITING_PHASES if any(b.phase == p for b in ready)), stalest.phase)
    return replace(stalest, phase=phase, step=min(b.step for b in ready), epoch=min(b.epoch for b in ready),
                   max_step_time=max(step_times) if step_times else None)


def _completed(record: ExitRecord | None) -> bool:
    return record is not None and record.status == "completed"


def _first_ending(monitor_exit: MonitorExit | None) -> RankEnding | None:
    if monitor_exit is None or not monitor_exit.ranks:
        return None
    return _in_end_order(monitor_exit)[0]


def _in_end_order(monitor_exit: MonitorExit) -> list[RankEnding]:
    """Endings by time; the monitor's ``first_rank`` first (it saw that one end first, whatever the clock says)."""
    return sorted(monitor_exit.ranks, key=lambda e: (e.rank != monitor_exit.first_rank, e.ended_at, e.rank))
