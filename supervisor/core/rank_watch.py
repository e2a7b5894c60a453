"""Stragglers and slowdowns of a running attempt: observe the ranks' heartbeats, name who is slow, act if asked.

One observation per poll, once every rank has stepped since the last one and all
of them are training (validation and saves are not compute). A straggler or a
slowdown is an event and an alert, with what NVML says of its GPU; with
``action: restart_without`` the straggler's GPU is quarantined and the attempt
stopped, so the relaunch runs elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from supervisor.alerts.events import StragglerAlert
from supervisor.core.context import CoreContext
from supervisor.core.outbox import Outbox
from supervisor.core.stopping import Stopping
from supervisor.core.tracking import TrackedAttempt
from supervisor.jobfiles.heartbeat import Heartbeat, read_heartbeat
from supervisor.jobfiles.layout import AttemptLayout, JobLayout
from supervisor.rules.causes import Cause, EventKind
from supervisor.rules.stragglers import RankScore, SlowdownDetector, StragglerDetector
from supervisor.store import AttemptRow, JobRow, OutboxAlert

log = logging.getLogger("ml_supervisor")


class RankWatch:
    """Feeds each running attempt's detectors and reports what they find."""

    def __init__(self, ctx: CoreContext, stopping: Stopping, outbox: Outbox) -> None:
        self._ctx = ctx
        self._stopping = stopping
        self._outbox = outbox

    def check(self, job: JobRow, attempt: AttemptRow, tracked: TrackedAttempt, now: float) -> None:
        """One observation of ``attempt`` (a no-op unless every rank has new training steps)."""
        settings = self._ctx.job_config(job).supervision.stragglers
        if not settings.enabled or tracked.world_size is None:
            return
        layout = JobLayout(Path(job.job_dir)).attempt(attempt.n)
        beats = _beats(layout, tracked.world_size)
        if beats is None or any(b.step <= tracked.observed_steps.get(r, -1) for r, b in beats.items()):
            return  # a rank not training, or no new step since the last look
        tracked.observed_steps = {r: b.step for r, b in beats.items()}
        if tracked.world_size > 1:
            self._ranks(job, attempt, tracked, beats, settings, now)
        else:
            self._single(job, attempt, tracked, beats[0], settings, now)

    def _ranks(self, job: JobRow, attempt: AttemptRow, tracked: TrackedAttempt, beats: dict[int, Heartbeat],
               settings: Any, now: float) -> None:
        if tracked.stragglers is None:
            tracked.stragglers = StragglerDetector(threshold=float(settings.threshold), window=int(settings.window))
        times = {r: b.compute_time for r, b in beats.items() if b.compute_time}
        if len(times) != len(beats):
            return
        for score in tracked.stragglers.observe(times, {r: b.compute_best for r, b in beats.items()}):
            gpu = attempt.gpus[score.rank] if score.rank < len(attempt.gpus) else None
            peers = sorted(t for r, t in times.items() if r != score.rank)
            message = (f"straggler: rank {score.rank}" + (f" (GPU {gpu})" if gpu is not None else "")
                       + f" computes a step in {score.compute_s * 1000:.0f} ms, {score.relative:.2f} of its peers' "
                       f"pace ({peers[len(peers) // 2] * 1000:.0f} ms) for {settings.window} looks in a row")
            self._report(job, attempt, message, now, score=score, gpu=gpu, action=str(settings.action))

    def _single(self, job: JobRow, attempt: AttemptRow, tracked: TrackedAttempt, beat: Heartbeat, settings: Any,
                now: float) -> None:
        if tracked.slowdown is None:
            tracked.slowdown = SlowdownDetector(slow_factor=float(settings.slow_factor), window=int(settings.window))
        if not beat.step_time:
            return
        factor = tracked.slowdown.observe(beat.step_time)
        if factor is None:
            return
        best = tracked.slowdown.best or 0.0
        gpu = attempt.gpus[0] if attempt.gpus else None
        message = (f"slow: the job's steps take {factor:.1f}x its own best ({beat.step_time * 1000:.0f} ms against "
                   f"{best * 1000:.0f} ms) for {settings.window} looks in a row"
                   + (f" on GPU {gpu}" if gpu is not None else ""))
        self._report(job, attempt, message, now, score=None, gpu=gpu, action="alert")

    def _report(self, job: JobRow, attempt: AttemptRow, message: str, now: float, *, score: RankScore | None,
                gpu: int | None, action: str) -> None:
        reading = self._ctx.gpus.last_reading(gpu) if self._ctx.gpus is not None and gpu is not None else None
        context = reading.performance() if reading is not None else None
        if context:
            reasons = context.get("throttle_reasons")
            message += f"; GPU clocks {context.get('sm_clock_mhz', '?')}/{context.get('sm_clock_max_mhz', '?')} MHz" \
                + (f", throttled: {', '.join(map(str, reasons))}" if isinstance(reasons, list) and reasons else "")
        moving = action == "restart_without" and gpu is not None and self._ctx.gpus is not None
        what = StragglerAlert(message=message, attempt=attempt.n, rank=score.rank if score else None, gpu=gpu,
                              relative=round(score.relative, 3) if score else None,
                              individual=round(score.individual, 3) if score else None,
                              action="restart_without" if moving else "alert", gpu_context=context)
        kind = EventKind.STRAGGLER if score is not None else EventKind.SLOW
        self._ctx.store.add_event(job.id, kind, message, now=now, attempt=attempt.n,
                                  data={"rank": what.rank, "gpu": gpu, "relative": what.relative,
                                        "individual": what.individual, "gpu_context": context, "action": what.action},
                                  alert=OutboxAlert(what.event, what.details()))
        log.warning("job %s: %s", job.id, message)
        if moving:
            assert gpu is not None and self._ctx.gpus is not None
            self._ctx.gpus.quarantine(gpu, f"straggler: rank {what.rank} of job {job.id}")
            self._stopping.begin_stop(job, Cause.STRAGGLER, f"moving off GPU {gpu}: {message}", now)
        self._outbox.send_pending()


def _beats(layout: AttemptLayout, world_size: int) -> dict[int, Heartbeat] | None:
    """Every rank's heartbeat while all of them train; None otherwise."""
    beats: dict[int, Heartbeat] = {}
    for rank in range(max(1, world_size)):
        beat = read_heartbeat(layout.heartbeat if world_size <= 1 else layout.heartbeat_of(rank))
        if beat is None or beat.phase != "train":
            return None
        beats[rank] = beat
    return beats
