"""A restart alert that waits for its launch: for backends whose launch decides where the restart runs.

A Slurm restart may stay inside its allocation (on which nodes, which left out) or go
to a new one: only the runner's ``launch`` knows, after the restart policy decided.
For such a backend (``Backend.restart_alert_at_launch``) the decision commits the
alert's facts in its ``restart`` event (``data["alert"]``) instead of the outbox, and
the launch commits the alert in the outbox with its own ``launch`` event, with the
launch's note added (``where``: "inside allocation 1234 on n1,n3 (n2 drained)").

Durable as before: the facts are committed with the decision, the alert with the
launch, each in one transaction. A daemon killed in between leaves the job in
backoff with the restart as its latest launch-related event; the next daemon's launch
owes the alert and sends it. A launch that fails sends it at once, saying so, so a
relaunch that keeps failing still tells the user. A job that ends before it relaunches
(stopped, out of budget) tells its ending instead.
"""

from __future__ import annotations

from typing import Any

from supervisor.alerts.events import AlertEvent
from supervisor.rules.causes import EventKind
from supervisor.rules.states import JobState
from supervisor.store import JobRow, OutboxAlert, Store

# The events that settle a held restart alert: the restart (owes it), its launch or failed launch (sent it).
_SETTLING = (EventKind.RESTART, EventKind.LAUNCH, EventKind.LAUNCH_FAILED)


def held(what: AlertEvent) -> dict[str, Any]:
    """The restart event's data that holds ``what`` for its launch."""
    return {"alert": {"event": what.event, "details": what.details()}}


def owed(store: Store, job: JobRow, *, where: str | None = None, not_started: str | None = None
         ) -> OutboxAlert | None:
    """The restart alert a launch (or failed launch) of ``job`` owes; None when none is owed.

    ``where``: the launch's note (where the attempt went); ``not_started``: why the launch failed.

    Owed when the job is backing off and its latest restart, launch or failed launch is a
    restart whose alert was held (``held``): the first launch, or launch failure, after it sends it.
    """
    if job.state is not JobState.BACKOFF:
        return None  # a first launch, or a finished job restarted by the user: no restart of the policy's
    latest = store.last_event(job.id, _SETTLING)
    alert = latest.data.get("alert") if latest is not None and latest.kind == EventKind.RESTART else None
    if not isinstance(alert, dict) or not isinstance(alert.get("details"), dict):
        return None
    details = dict(alert["details"])
    details.update({k: v for k, v in (("where", where), ("not_started", not_started)) if v})
    return OutboxAlert(str(alert.get("event") or "restart"), details)
