"""The ``alerts-webhook`` thread: POST each alert to the Slack-compatible webhook, with retries.

A title already posted less than ``wait_duration_s`` ago is skipped (recorded
``throttled``): a crash loop must not flood a channel.
"""

from __future__ import annotations

import queue
import time
from typing import Any

from supervisor.alerts.delivery import STOP, DeliveryLedger, Retry
from supervisor.alerts.model import Alert
from supervisor.alerts.store import FAILED, THROTTLED
from supervisor.alerts.webhook import WebhookError, post_webhook


class WebhookLoop:
    """Deliver the alerts put on ``inbox`` to ``url`` until it reads ``STOP``.

    Without a ``url`` nothing is put on ``inbox`` (intake routes no alert to the webhook).
    """

    def __init__(self, inbox: queue.Queue[Any], ledger: DeliveryLedger, *, url: str | None, wait_duration_s: float,
                 timeout_s: float, retry: Retry) -> None:
        self.inbox = inbox
        self.ledger = ledger
        self.url = url
        self.wait_duration_s = wait_duration_s
        self.timeout_s = timeout_s
        self.retry = retry
        self._last_sent: dict[str, float] = {}  # title -> monotonic time of the last POST

    def run(self) -> None:
        """The thread's body: one alert at a time, each finished in the ledger whatever happens."""
        while True:
            item = self.inbox.get()
            if item is STOP:
                return
            try:
                self._deliver(item)
            finally:
                self.ledger.finish(item.alert_id, "webhook")

    def _deliver(self, alert: Alert) -> None:
        assert self.url
        log = self.ledger.log
        now = time.monotonic()
        last = self._last_sent.get(alert.title)
        if last is not None and now - last < self.wait_duration_s:
            log.info("alert %r not posted to the webhook: same title %.0fs ago", alert.title, now - last)
            self.ledger.record(alert, "webhook", THROTTLED)
            return
        error: WebhookError | None = None
        attempts = 0
        retries = self.retry.retries
        for attempt in range(retries + 1):
            attempts = attempt + 1
            try:
                post_webhook(self.url, alert, self.timeout_s)
            except WebhookError as exc:
                error = exc
                if not exc.retriable or attempt == retries or self.retry.pause(attempt):
                    break
                continue
            self._last_sent[alert.title] = time.monotonic()
            self.ledger.record(alert, "webhook", "delivered", attempts=attempts)
            return
        log.error("alert %r not delivered to the webhook after %d tries: %s (kept in %s)",
                  alert.title, attempts, error, self.ledger.path)
        self.ledger.record(alert, "webhook", FAILED, attempts=attempts, error=str(error))
