"""``Schedules``: scheduled and recurring runs (``supervisorctl submit --at TIME`` / ``--cron LINE``).

A schedule is kept in the store (``store/schedules.py``) with the config text it was made
with. Its next fire time is computed by APScheduler's triggers from the loop's clock
(``schedule_times``) and set as a timer on the loop's ``Timers`` (kind ``SCHEDULE``, keyed by
the schedule's id): the loop sleeps until it is due, as for every other deadline, and tests
move the clock by hand. At a fire, on the loop thread:

- the fire time is ``firing_at`` and the next one ``next_run_at``, in one write;
- the run is submitted as a normal job (``prepare_job``: the checks and the import check,
  seconds, so off the loop on a thread of its own; then ``Requests.register`` on the loop),
  its ``submitted`` event carrying ``{"schedule", "fire_time"}``;
- the schedule records the job (``last_job_id``, ``runs``) or why none started (``last_error``).

A fire examined more than ``MISFIRE_GRACE_S`` after its time (the daemon was down, or a
node rebooted) has misfired: ``misfire: run_once`` starts one run now however many were
missed, ``skip`` starts none; either way the next fire time is the first after now. At
``open`` a ``firing_at`` left by a killed daemon is finished: the job its event names is
recorded, or, when there is none, the run is submitted now.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor.config.safe_yaml import read_config_text
from supervisor.core.context import CoreContext
from supervisor.core.requests import Requests
from supervisor.core.schedule_times import MISFIRE_CHOICES, MISFIRE_GRACE_S, When, format_time, parse_when
from supervisor.core.submit import SubmitRequest, load_request_config, prepare_job
from supervisor.core.timers import TimerKind
from supervisor.errors import ConfigError, SupervisorError
from supervisor.store import JobRow
from supervisor.store.schedules import ScheduleRow, ScheduleState, ScheduleTable

log = logging.getLogger("ml_supervisor")


def when_of(row: ScheduleRow) -> When:
    return When(row.kind, row.spec, row.timezone)


class Schedules:
    """Create, fire and remove schedules; every write on the loop thread."""

    def __init__(self, ctx: CoreContext, requests: Requests) -> None:
        self._ctx = ctx
        self._requests = requests
        self.table = ScheduleTable(ctx.store)
        self.threads: list[threading.Thread] = []  # submits running off the loop (the tests join them)
        ctx.timers.handlers[TimerKind.SCHEDULE] = self.fire

    # -- what people ask (the API threads) -------------------------------------------------------
    def create(self, req: SubmitRequest, *, at: str | None, cron: str | None, timezone: str | None,
               misfire: str, owner_uid: int) -> ScheduleRow:
        """Check the rule and the job completely (as a submit would), then keep the schedule. Thread-safe.

        Every error is one line (``ConfigError`` for the rule and the config). The job's checks
        run in the caller's thread: the import check takes seconds and must not hold the loop.
        """
        ctx = self._ctx
        if misfire not in MISFIRE_CHOICES:
            raise ConfigError("--misfire", None, f"must be one of {', '.join(MISFIRE_CHOICES)}; got {misfire[:40]!r}")
        now = ctx.clock()
        when = parse_when(at=at, cron=cron, timezone=timezone, now=now)
        first = when.next_after(now, created_at=now)
        if first is None:
            raise ConfigError(f"--cron {when.spec!r}", None, "never fires")
        if req.config_text is None:  # the daemon's own user, by path: each run uses the text as it is now
            path = Path(req.cwd) / req.config_path
            req.config_text = read_config_text(path)
        cfg = load_request_config(req)
        self._check_job(req, owner_uid)
        row = ScheduleRow(id=f"sched-{secrets.token_hex(3)}", name=req.name or str(cfg.name), kind=when.kind,
                          spec=when.spec, timezone=when.timezone, misfire=misfire, config_path=req.config_path,
                          cwd=req.cwd, config_text=req.config_text or "", created_at=now, updated_at=now,
                          owner_uid=owner_uid, overrides=list(req.overrides), job_name=req.name, next_run_at=first)
        return ctx.loop.call(self._insert, row)

    def _check_job(self, req: SubmitRequest, owner_uid: int) -> None:
        """Everything a submit checks (schema, workdir, python, GPUs, the import check), leaving nothing behind."""
        settings = self._ctx.settings
        scratch = Path(tempfile.mkdtemp(prefix="schedule-check-", dir=self._ctx.state_dir))
        try:
            prepare_job(req, jobs_dir=scratch, trainer_module=settings.trainer_module, gpu_count=self._gpu_count(),
                        check_timeout=settings.check_timeout, now=self._ctx.clock(), owner_uid=owner_uid)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _insert(self, row: ScheduleRow) -> ScheduleRow:
        self.table.insert(row)
        assert row.next_run_at is not None
        self._ctx.timers.schedule(row.id, TimerKind.SCHEDULE, row.next_run_at)
        log.info("schedule %s: %s %s (%s), first run %s", row.id, row.kind, row.spec, row.timezone,
                 format_time(row.next_run_at, row.timezone))
        return row

    def remove(self, schedule_id: str, *, owner_uid: int | None = None) -> ScheduleRow:
        """Unschedule (loop thread): no further runs; runs already started go on as jobs of their own."""
        row = self.table.get(schedule_id, owner_uid=owner_uid)
        if row.state is not ScheduleState.ACTIVE:
            return row
        self._ctx.timers.cancel(row.id, TimerKind.SCHEDULE)
        log.info("schedule %s removed", row.id)
        return self.table.update(row.id, now=self._ctx.clock(), state=ScheduleState.REMOVED, next_run_at=None)

    # -- the loop --------------------------------------------------------------------------------
    def start(self) -> None:
        """At open: finish fires a killed daemon left half done, and set every active schedule's timer."""
        for row in self.table.select(states=(ScheduleState.ACTIVE, ScheduleState.DONE)):
            if row.firing_at is not None:
                job_id = self.table.job_for_fire(row.id, row.firing_at)
                if job_id is not None:
                    self._started(row.id, row.firing_at, job_id)
                else:
                    log.info("schedule %s: the run due at %s never became a job; submitting it now", row.id,
                             format_time(row.firing_at, row.timezone))
                    self._submit(row, row.firing_at)
            if row.state is ScheduleState.ACTIVE and row.next_run_at is not None:
                self._ctx.timers.schedule(row.id, TimerKind.SCHEDULE, row.next_run_at)

    def fire(self, schedule_id: str) -> None:
        """A schedule's timer is due (loop thread): start its run (or skip a misfired one), set the next."""
        try:
            self._fire(schedule_id)
        except Exception:  # one schedule's failure must not stop the loop's other timers
            log.exception("schedule %s: could not fire", schedule_id)

    def _fire(self, schedule_id: str) -> None:
        ctx = self._ctx
        row = self.table.get(schedule_id)
        if row.state is not ScheduleState.ACTIVE or row.next_run_at is None:
            return
        now, due = ctx.clock(), row.next_run_at
        if due > now:  # not yet (the clock moved back): look again then
            ctx.timers.schedule(row.id, TimerKind.SCHEDULE, due)
            return
        when = when_of(row)
        following = when.next_after(max(now, due), created_at=row.created_at)
        state = ScheduleState.ACTIVE if following is not None else ScheduleState.DONE
        misfired = now - due > MISFIRE_GRACE_S
        missed = when.missed(due, now, created_at=row.created_at) if misfired else 1
        if misfired and row.misfire == "skip":
            log.warning("schedule %s: %d run%s missed since %s (misfire: skip)", row.id, missed,
                        "s" if missed != 1 else "", format_time(due, row.timezone))
            self.table.update(row.id, now=now, next_run_at=following, state=state, skipped=row.skipped + missed)
        else:
            if misfired:
                log.warning("schedule %s: %d run%s missed since %s; starting one now (misfire: run_once)", row.id,
                            missed, "s" if missed != 1 else "", format_time(due, row.timezone))
            row = self.table.update(row.id, now=now, next_run_at=following, state=state, firing_at=due,
                                    skipped=row.skipped + missed - 1)
            self._submit(row, due)
        if following is not None:
            ctx.timers.schedule(row.id, TimerKind.SCHEDULE, following)

    def _submit(self, row: ScheduleRow, fire_time: float) -> None:
        """Submit the run of ``fire_time`` as a normal job: on a thread of its own (the import check takes
        seconds), or right here when there is no loop thread (the tests drive the core by hand)."""
        if self._ctx.loop.thread is None:
            self._submit_job(row, fire_time)
            return
        thread = threading.Thread(target=self._submit_job, args=(row, fire_time), name=f"schedule-{row.id}",
                                  daemon=True)
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()

    def _submit_job(self, row: ScheduleRow, fire_time: float) -> None:
        ctx = self._ctx
        req = SubmitRequest(config_path=row.config_path, cwd=row.cwd, config_text=row.config_text,
                            overrides=list(row.overrides), name=row.job_name,
                            origin={"schedule": row.id, "fire_time": fire_time})
        try:
            job, _cfg = prepare_job(req, jobs_dir=ctx.jobs_dir, trainer_module=ctx.settings.trainer_module,
                                    gpu_count=self._gpu_count(), check_timeout=ctx.settings.check_timeout,
                                    now=ctx.clock(), owner_uid=row.owner_uid)
        except SupervisorError as exc:
            self._call(self._failed, row.id, fire_time, exc.message)
            return
        except Exception as exc:
            log.exception("schedule %s: the run could not be prepared", row.id)
            self._call(self._failed, row.id, fire_time, f"{type(exc).__name__}: {exc}")
            return
        self._call(self._register, row.id, fire_time, job, req)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._ctx.loop.call(fn, *args)
        except SupervisorError as exc:  # the daemon is closing: the next one finishes this fire (start)
            log.warning("schedule: %s", exc.message)
        except Exception:  # firing_at stays set: the next start finishes this fire
            log.exception("schedule: %s failed", getattr(fn, "__name__", fn))

    def _register(self, schedule_id: str, fire_time: float, job: JobRow, req: SubmitRequest) -> None:
        try:
            registered = self._requests.register(job, req)  # on failure it removes the job's dir
        except Exception as exc:
            log.exception("schedule %s: the run could not be registered", schedule_id)
            message = exc.message if isinstance(exc, SupervisorError) else f"{type(exc).__name__}: {exc}"
            self._failed(schedule_id, fire_time, message)
            return
        self._started(schedule_id, fire_time, registered.id)

    def _started(self, schedule_id: str, fire_time: float, job_id: str) -> None:
        row = self.table.get(schedule_id)
        if row.firing_at != fire_time:
            return  # already recorded
        log.info("schedule %s: started job %s (due %s)", row.id, job_id, format_time(fire_time, row.timezone))
        self.table.update(row.id, now=self._ctx.clock(), firing_at=None, last_run_at=fire_time, last_job_id=job_id,
                          runs=row.runs + 1, last_error=None)

    def _failed(self, schedule_id: str, fire_time: float, message: str) -> None:
        row = self.table.get(schedule_id)
        log.warning("schedule %s: the run due %s did not start: %s", row.id, format_time(fire_time, row.timezone),
                    message)
        self.table.update(row.id, now=self._ctx.clock(), firing_at=None, last_error=message)

    def _gpu_count(self) -> int | None:
        return self._ctx.gpus.count() if self._ctx.gpus is not None else None

