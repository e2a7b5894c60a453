"""Alerts owed to the user: committed with the change that causes them, then handed to the alert hook."""

from __future__ import annotations

import logging
from collections.abc import Callable

from supervisor.alerts.events import AlertEvent, event_from_details
from supervisor.errors import SupervisorError
from supervisor.store import JobRow, Store

log = logging.getLogger("ml_supervisor")

# Alert hook: (job, what happened) -> None. Wired to the W&B alert dispatcher by the daemon.
AlertHook = Callable[[JobRow, AlertEvent], None]


class Outbox:
    """Sends what the store's outbox holds (at least once; the dispatcher drops repeats by ``alert_id``)."""

    def __init__(self, store: Store, clock: Callable[[], float], hook: AlertHook | None) -> None:
        self._store = store
        self._clock = clock
        self.hook = hook  # replaceable (tests kill the daemon inside it)

    def send_pending(self) -> None:
        """Hand every unsent alert to the hook, then mark it sent.

        A daemon killed between the two sends it again at its next start with the same
        ``alert_id``; an alert whose hook raised stays pending for the next try.
        """
        store = self._store
        for owed in store.pending_alerts():
            try:
                job = store.get_job(owed.job_id)
                what = event_from_details(owed.alert, owed.details, alert_id=f"{owed.job_id}-event-{owed.event_id}")
            except (SupervisorError, KeyError, TypeError) as exc:  # a job or an event this version cannot rebuild
                log.error("job %s: outbox alert %s (event %d) cannot be sent: %s", owed.job_id, owed.alert,
                          owed.event_id, exc)
                store.mark_alert_sent(owed.event_id, now=self._clock())  # never retried on every event
                continue
            if self.hook is not None:
                try:
                    self.hook(job, what)
                except Exception:  # alerts must never break supervision
                    log.exception("job %s: alert %s failed; kept in the outbox", job.id, what.event)
                    continue
            store.mark_alert_sent(owed.event_id, now=self._clock())
