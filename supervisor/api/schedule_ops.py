"""The API's scheduled-run operations (``supervisorctl submit --at/--cron``, ``schedules``, ``unschedule``).

A mixin of ``Operations``: the same caller rules as jobs (a non-admin creates, sees and
removes only their own schedules; another's is "not found"), and the same rule for the
config (a user sends its text; the daemon reads no file on their behalf).
"""

from __future__ import annotations

import os
from typing import Any

from supervisor.access import Caller
from supervisor.api.arguments import BadRequest
from supervisor.core import Supervisor
from supervisor.core.schedule_times import format_time, iso_time
from supervisor.core.schedules import when_of
from supervisor.core.submit import SubmitRequest
from supervisor.store.schedules import ScheduleRow, ScheduleState, ScheduleTable

NEXT_RUNS_SHOWN = 3


def schedule_view(row: ScheduleRow) -> dict[str, Any]:
    """What ``schedules --json`` shows of one schedule (field names are a contract: add, never rename)."""
    next_runs: list[float] = []
    if row.state is ScheduleState.ACTIVE and row.next_run_at is not None:
        next_runs = [row.next_run_at, *when_of(row).upcoming(row.next_run_at, created_at=row.created_at,
                                                             count=NEXT_RUNS_SHOWN - 1)]
    return {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,  # "at" | "cron"
        "spec": row.spec,
        "timezone": row.timezone,
        "misfire": row.misfire,
        "state": row.state.value,
        "config_source": row.config_path,
        "overrides": list(row.overrides),
        "owner_uid": row.owner_uid,
        "created_at": row.created_at,
        "next_run_at": row.next_run_at,
        "next_runs": [iso_time(t, row.timezone) for t in next_runs],
        "next_runs_text": [format_time(t, row.timezone) for t in next_runs],
        "starting": row.firing_at is not None,  # a run is being submitted now
        "last_run_at": row.last_run_at,
        "last_job_id": row.last_job_id,
        "runs": row.runs,
        "skipped": row.skipped,
        "last_error": row.last_error,
    }


class ScheduleOperations:
    """``op_schedule``, ``op_schedules``, ``op_unschedule`` (mixed into ``Operations``)."""

    sup: Supervisor
    caller: Caller

    def _schedule_owner(self) -> int | None:
        return None if self.caller.admin else self.caller.uid

    def _schedules(self) -> ScheduleTable:
        return self.sup.parts.schedules.table

    def op_schedule(self, config_path: str, cwd: str, config_text: str | None = None,
                    overrides: list[str] | None = None, name: str | None = None, at: str | None = None,
                    cron: str | None = None, timezone: str | None = None, misfire: str = "run_once"
                    ) -> dict[str, Any]:
        """A run at ``at`` (ISO time) or on ``cron`` (a cron line), in ``timezone`` (default: the daemon's)."""
        if config_text is None and self.caller.uid != os.getuid():
            raise BadRequest("schedule: config_text: required (the daemon reads no file on another user's behalf)")
        req = SubmitRequest(config_path=config_path, cwd=cwd, config_text=config_text,
                            overrides=list(overrides or []), name=name)
        row = self.sup.schedule(req, at=at, cron=cron, timezone=timezone, misfire=misfire, owner_uid=self.caller.uid)
        return schedule_view(row)

    def op_schedules(self, all: bool = False) -> list[dict[str, Any]]:
        """Active schedules (``all``: also those done or removed), oldest first."""
        states = None if all else (ScheduleState.ACTIVE,)
        return [schedule_view(r) for r in self._schedules().select(states=states, owner_uid=self._schedule_owner())]

    def op_unschedule(self, schedule: str) -> dict[str, Any]:
        owner = self._schedule_owner()
        found = self._schedules().get(schedule, owner_uid=owner)  # "not found" for another user's, before the loop
        row = self.sup.call(lambda: self.sup.unschedule(found.id, owner_uid=owner))
        return schedule_view(row)
