"""``AlertDispatcher``: take alerts in without ever blocking or crashing the daemon, and route them to channels.

``send`` logs the alert and appends it to ``alerts.jsonl`` before it returns (a
daemon SIGKILLed right after a restart decision keeps that alert), skipping an
``alert_id`` already recorded (the core re-sends outbox alerts after a crash), then
queues it. The ``alerts-intake`` thread hands it to the webhook and W&B loops
(``webhook_loop``, ``wandb_loop``); deliveries are at-least-once.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from supervisor.alerts.delivery import STOP, DeliveryLedger, Retry
from supervisor.alerts.model import Alert
from supervisor.alerts.store import DROPPED, alerts_path, record_alert
from supervisor.alerts.wandb_loop import WandbLoop
from supervisor.alerts.webhook_loop import WebhookLoop

_LOG_LEVELS = {"INFO": logging.INFO, "WARN": logging.WARNING, "ERROR": logging.ERROR}


class AlertDispatcher:
    """Deliver alerts to the daemon log, ``alerts.jsonl``, W&B (via a worker process) and a webhook.

    ``python`` is the interpreter that runs the wandb worker (it must be able to
    import ``supervisor`` and ``wandb``); ``worker_env`` is added to its
    environment. ``retry_delay_s`` is the first pause between tries (doubled
    each time); ``batch_window_s`` is how long the W&B thread waits for more
    alerts to share one worker run. ``online_init_timeout_s`` bounds an online
    ``wandb.init`` (no network) before the worker falls back to writing offline.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        webhook_url: str | None = None,
        wait_duration_s: float = 300,
        queue_size: int = 256,
        timeout_s: float = 60,
        retries: int = 3,
        log: logging.Logger | None = None,
        python: str = sys.executable,
        worker_env: Mapping[str, str] | None = None,
        retry_delay_s: float = 2.0,
        batch_window_s: float = 1.0,
        online_init_timeout_s: float = 20.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.path = alerts_path(self.state_dir)
        self.webhook_url = webhook_url or None
        self.log = log or logging.getLogger("ml_supervisor.alerts")
        size = max(1, queue_size)
        self._intake: queue.Queue[Any] = queue.Queue(maxsize=size)
        self._webhook_q: queue.Queue[Any] = queue.Queue(maxsize=size)
        self._wandb_q: queue.Queue[Any] = queue.Queue(maxsize=size)
        self._stopping = threading.Event()
        self._stopped = False  # stop() ran: send() only logs
        self._ledger = DeliveryLedger(self.state_dir, self.path, self.log)
        retry = Retry(retries=max(0, int(retries)), delay_s=float(retry_delay_s), stopping=self._stopping)
        self._webhook = WebhookLoop(self._webhook_q, self._ledger, url=self.webhook_url,
                                    wait_duration_s=float(wait_duration_s), timeout_s=float(timeout_s), retry=retry)
        self._wandb = WandbLoop(self._wandb_q, self._ledger, state_dir=self.state_dir, python=python,
                                worker_env=worker_env or {}, wait_duration_s=float(wait_duration_s),
                                timeout_s=float(timeout_s), retry=retry, batch_window_s=float(batch_window_s),
                                online_init_timeout_s=float(online_init_timeout_s))
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the delivery threads (idempotent; a stopped dispatcher stays stopped)."""
        if self._threads or self._stopped:
            return
        self._stopping.clear()
        with contextlib.suppress(OSError):
            self.state_dir.mkdir(parents=True, exist_ok=True)
        for name, target in (
            ("alerts-intake", self._intake_loop),
            ("alerts-webhook", self._webhook.run),
            ("alerts-wandb", self._wandb.run),
        ):
            thread = threading.Thread(target=self._guarded(target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def send(self, alert: Alert) -> None:
        """Log ``alert``, record it in ``alerts.jsonl`` and queue it for delivery. Never raises.

        The alert is logged first, at its level, with its whole text, then
        recorded (one appended line: the only wait). When the queue is full
        (deliveries stuck far behind) it is not delivered: an ERROR line, and a
        ``dropped`` record for each of its channels; alerts sent before
        ``start`` wait in the queue.
        """
        try:
            if self._stopped:
                self.log.error("alert dispatcher stopped: alert %r only logged: %s", alert.title,
                               alert.text.replace("\n", " | "))
                return
            claim = self._ledger.claim(alert)
            if claim == "in_flight":
                return  # the same alert object sent twice: deliver it once
            if claim == "settled":
                self.log.info("alert %s (%r) already recorded in %s: not sent again", alert.alert_id, alert.title,
                              self.path)
                return
            self.log.log(
                _LOG_LEVELS.get(alert.level, logging.WARNING),
                "alert [%s] %s: %s",
                alert.level,
                alert.title,
                alert.text.replace("\n", " | "),
            )
            channels = self._channels(alert)
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)  # sent before start(), which makes it too
                if claim == "new":  # owed: recorded already, only its deliveries are missing
                    record_alert(self.path, alert, channels)
            except OSError as exc:
                self.log.error("cannot record alert %r in %s: %s", alert.title, self.path, exc)
            try:
                self._intake.put_nowait(alert)
            except queue.Full:
                self._ledger.finish(alert.alert_id, "intake")
                self.log.error("alert queue full (%d waiting): alert %r NOT delivered", self._intake.maxsize,
                               alert.title)
                for channel in channels:
                    self._ledger.record(alert, channel, DROPPED, error="queue full")
        except Exception:  # a logging handler or anything else failing must not reach the daemon loop
            with contextlib.suppress(Exception):
                self.log.exception("alert %r could not be queued", getattr(alert, "title", alert))

    def flush(self, timeout_s: float) -> bool:
        """Wait until every alert sent so far is recorded and delivered (or failed); False on timeout."""
        return self._ledger.wait(timeout_s)

    def stop(self, timeout_s: float = 10) -> None:
        """Deliver what can be delivered within ``timeout_s``, then stop the threads.

        Alerts still undelivered keep their "pending" state in ``alerts.jsonl``;
        a running wandb worker is killed.
        """
        self._stopped = True
        if not self._threads:
            return
        self.flush(timeout_s)
        self._stopping.set()
        for q in (self._intake, self._webhook_q, self._wandb_q):
            with contextlib.suppress(queue.Full):
                q.put_nowait(STOP)
        self._wandb.kill_worker()
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads = []

    def healthy(self) -> bool:
        """True while every delivery thread is alive (for the daemon's own health check)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def _channels(self, alert: Alert) -> list[str]:
        """The channels ``alert`` goes to besides the log and the file."""
        channels = []
        if self.webhook_url:
            channels.append("webhook")
        if alert.wandb is not None and alert.wandb.mode != "disabled":
            channels.append("wandb")
        return channels

    def _guarded(self, loop: Callable[[], None]) -> Callable[[], None]:
        """Run ``loop``; if it ever raises, log and restart it, so the thread never dies of a bug."""

        def run() -> None:
            while not self._stopping.is_set():
                try:
                    loop()
                    return
                except Exception:
                    self.log.exception("alert delivery thread crashed; restarting it")
                    time.sleep(0.5)

        return run

    def _intake_loop(self) -> None:
        """The ``alerts-intake`` thread: put each alert on the queue of each of its channels."""
        while True:
            item = self._intake.get()
            if item is STOP:
                return
            alert: Alert = item
            channels = self._channels(alert)  # send() recorded the alert with these
            self._ledger.add_channels(alert.alert_id, channels)
            for channel, q in (("webhook", self._webhook_q), ("wandb", self._wandb_q)):
                if channel not in channels:
                    continue
                try:
                    q.put_nowait(alert)
                except queue.Full:
                    self.log.error("%s alert queue full: alert %r dropped for that channel", channel, alert.title)
                    self._ledger.record(alert, channel, DROPPED, error="queue full")
                    self._ledger.finish(alert.alert_id, channel)
            self._ledger.finish(alert.alert_id, "intake")
