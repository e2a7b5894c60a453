"""What the dispatcher and its delivery loops share: the ledger of alerts in flight, and the retry pause.

The ledger knows which channels of each alert are still undelivered (for ``flush``),
which ids ``alerts.jsonl`` already holds (dedup across daemon restarts), and writes the
delivery records; a failure to write one is logged, never raised.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from supervisor.alerts.model import Alert
from supervisor.alerts.store import PENDING, read_alerts, record_delivery

STOP: Final = object()
"""Queue sentinel: the loop reading it returns."""

Claim = Literal["new", "owed", "settled", "in_flight"]


@dataclass
class _Pending:
    """An alert and its channels still in flight."""

    alert: Alert
    channels: set[str] = field(default_factory=set)


class DeliveryLedger:
    """The alerts of one state dir still in flight, the ids already recorded, and their delivery records.

    Thread-safe: ``send`` and every delivery thread use it.
    """

    def __init__(self, state_dir: Path, path: Path, log: logging.Logger) -> None:
        self.state_dir = state_dir
        self.path = path  # alerts.jsonl
        self.log = log
        self._cond = threading.Condition()
        self._pending: dict[str, _Pending] = {}  # alert_id -> channels in flight (guarded by _cond)
        # alert_id -> its deliveries are still owed (recorded by a dispatcher that died first); None until read
        self._recorded: dict[str, bool] | None = None  # (guarded by _cond)

    def claim(self, alert: Alert) -> Claim:
        """Take ``alert`` in for delivery (its ``intake`` step pending) unless it is in flight or settled.

        ``new``: never recorded; ``owed``: recorded by a dispatcher that died before delivering it
        (taken in, not to be recorded again); ``settled``: recorded and delivered, or taken in by this
        ledger before (not taken in);
        ``in_flight``: the same alert sent twice (not taken in again).
        """
        with self._cond:
            if alert.alert_id in self._pending:
                return "in_flight"
            owed = self._seen(alert.alert_id)
            if owed is False:
                return "settled"
            self._pending[alert.alert_id] = _Pending(alert, {"intake"})
            return "new" if owed is None else "owed"

    def add_channels(self, alert_id: str, channels: list[str]) -> None:
        """The channels ``alert_id`` goes to are now in flight too."""
        with self._cond:
            if alert_id in self._pending:
                self._pending[alert_id].channels.update(channels)

    def finish(self, alert_id: str, channel: str) -> None:
        """``channel`` is done with ``alert_id`` (delivered, failed or dropped)."""
        with self._cond:
            pending = self._pending.get(alert_id)
            if pending is None:
                return
            pending.channels.discard(channel)
            if not pending.channels:
                del self._pending[alert_id]
                self._cond.notify_all()

    def wait(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def record(self, alert: Alert, channel: str, status: str, **facts: Any) -> None:
        """Append a delivery record of ``alert`` on ``channel``; a write failure is logged."""
        try:
            record_delivery(self.path, alert.alert_id, channel, status, **facts)
        except OSError as exc:
            self.log.error("cannot record delivery of alert %r in %s: %s", alert.title, self.path, exc)

    def _seen(self, alert_id: str) -> bool | None:
        """None: a new alert; True: recorded before, its deliveries owed; False: recorded and settled.

        Marks the id settled (this call delivers it). Reads ``alerts.jsonl`` once, at the first send.
        The caller holds ``_cond``.
        """
        if self._recorded is None:
            try:
                self._recorded = {a["alert_id"]: a["status"] == PENDING for a in read_alerts(self.state_dir)}
            except OSError as exc:
                self.log.error("cannot read %s to skip alerts recorded before: %s", self.path, exc)
                self._recorded = {}
        owed = self._recorded.get(alert_id)
        self._recorded[alert_id] = False
        return owed


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a delivery loop retries; ``stopping`` cuts a pause short."""

    retries: int
    delay_s: float
    stopping: threading.Event

    def pause(self, attempt: int) -> bool:
        """Back off before retry ``attempt + 1`` (the delay doubles each time); True when stopping instead."""
        return self.stopping.wait(self.delay_s * (2**attempt))
