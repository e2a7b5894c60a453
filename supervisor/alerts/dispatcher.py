"""Deliver alerts without ever blocking or crashing the daemon.

``send`` logs the alert, appends it to ``<state_dir>/alerts.jsonl`` (one
fsynced line, before it returns: a daemon SIGKILLed right after a restart
decision keeps that restart's alert record; the chaos soak found it lost when
a thread wrote it) and puts it on a bounded queue; it never raises and never
waits for a delivery. Three daemon threads do the rest:

- ``alerts-intake`` hands the alert to its channels;
- ``alerts-webhook`` POSTs it to the optional Slack-compatible webhook, with a
  timeout and retries, skipping a title already sent less than
  ``wait_duration_s`` ago (a crash loop must not flood a channel);
- ``alerts-wandb`` gathers the alerts that arrive within ``batch_window_s``,
  groups them per job, and runs ONE ``python -m supervisor.alerts.wandb_worker``
  subprocess for the lot (wandb is imported only there), killed at ``timeout_s``
  and retried ``retries`` times while the failure is retriable.

Every outcome is appended to ``alerts.jsonl`` as a delivery record and failures
are logged; nothing is raised to the caller.

Dedup by ``alert_id``: the core re-sends an outbox alert (a restart, an ending)
after a daemon crash between sending it and marking it sent, with the same id.
An id already recorded in ``alerts.jsonl`` is not recorded again, so the file
holds each alert exactly once (the chaos soak's invariant). Its external
deliveries are at-least-once instead: when none of its delivery records made
it to the file (the daemon died mid-delivery) it is delivered again, since a
restart nobody hears of is worse than a repeated one; one already settled is
skipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.alerts.model import Alert, WandbTarget
from supervisor.alerts.store import (
    DROPPED,
    FAILED,
    PENDING,
    THROTTLED,
    alerts_path,
    read_alerts,
    record_alert,
    record_delivery,
)
from supervisor.alerts.webhook import WebhookError, post_webhook

_LOG_LEVELS = {"INFO": logging.INFO, "WARN": logging.WARNING, "ERROR": logging.ERROR}
_STOP = object()  # queue sentinel


@dataclass
class _Pending:
    """Bookkeeping for ``flush``: channels of an alert still in flight."""

    alert: Alert
    channels: set[str] = field(default_factory=set)


class AlertDispatcher:
    """Deliver alerts to the daemon log, ``alerts.jsonl``, W&B (via a worker process) and a webhook.

    ``python`` is the interpreter that runs the wandb worker (it must be able to
    import ``supervisor`` and ``wandb``); ``worker_env`` is added to its
    environment. ``retry_delay_s`` is the first pause between tries (doubled
    each time); ``batch_window_s`` is how long the W&B thread waits for more
    alerts to share one worker run (a worker costs ~1.5-2 s, see the report).
    ``online_init_timeout_s`` bounds an online ``wandb.init`` (no network) before
    the worker falls back to writing the alert offline.
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
        self.wait_duration_s = float(wait_duration_s)
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.log = log or logging.getLogger("ml_supervisor.alerts")
        self.python = python
        self.worker_env = dict(worker_env or {})
        self.retry_delay_s = float(retry_delay_s)
        self.batch_window_s = float(batch_window_s)
        self.online_init_timeout_s = float(online_init_timeout_s)

        self._intake: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._webhook_q: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._wandb_q: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._stopping = threading.Event()
        self._stopped = False  # stop() ran: send() only logs
        self._cond = threading.Condition()
        self._pending: dict[str, _Pending] = {}  # alert_id -> channels in flight (guarded by _cond)
        # alert_id -> its deliveries are still owed (recorded by a dispatcher that died first); None until read
        self._recorded: dict[str, bool] | None = None  # (guarded by _cond)
        self._webhook_last_sent: dict[str, float] = {}  # title -> monotonic time of the last POST
        self._threads: list[threading.Thread] = []
        self._worker: subprocess.Popen[bytes] | None = None  # the running wandb worker, for stop()
        self._worker_lock = threading.Lock()

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        """Start the delivery threads (idempotent; a stopped dispatcher stays stopped)."""
        if self._threads or self._stopped:
            return
        self._stopping.clear()
        with contextlib.suppress(OSError):
            self.state_dir.mkdir(parents=True, exist_ok=True)
        for name, target in (
            ("alerts-intake", self._intake_loop),
            ("alerts-webhook", self._webhook_loop),
            ("alerts-wandb", self._wandb_loop),
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
            with self._cond:
                if alert.alert_id in self._pending:
                    return  # the same alert object sent twice: deliver it once
                owed = self._seen(alert.alert_id)
                if owed is not False:
                    self._pending[alert.alert_id] = _Pending(alert, {"intake"})
            if owed is False:
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
                if owed is None:  # owed: recorded already, only its deliveries are missing
                    record_alert(self.path, alert, channels)
            except OSError as exc:
                self.log.error("cannot record alert %r in %s: %s", alert.title, self.path, exc)
            try:
                self._intake.put_nowait(alert)
            except queue.Full:
                self._finish(alert.alert_id, "intake")
                self.log.error("alert queue full (%d waiting): alert %r NOT delivered", self._intake.maxsize,
                               alert.title)
                for channel in channels:
                    self._record(alert, channel, DROPPED, error="queue full")
        except Exception:  # a logging handler or anything else failing must not reach the daemon loop
            with contextlib.suppress(Exception):
                self.log.exception("alert %r could not be queued", getattr(alert, "title", alert))

    def flush(self, timeout_s: float) -> bool:
        """Wait until every alert sent so far is recorded and delivered (or failed); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

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
                q.put_nowait(_STOP)
        self._kill_worker()
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads = []

    def healthy(self) -> bool:
        """True while every delivery thread is alive (for the daemon's own health check)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    # ------------------------------------------------------------------ bookkeeping

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

    def _finish(self, alert_id: str, channel: str) -> None:
        with self._cond:
            pending = self._pending.get(alert_id)
            if pending is None:
                return
            pending.channels.discard(channel)
            if not pending.channels:
                del self._pending[alert_id]
                self._cond.notify_all()

    def _channels(self, alert: Alert) -> list[str]:
        """The channels ``alert`` goes to besides the log and the file."""
        channels = []
        if self.webhook_url:
            channels.append("webhook")
        if alert.wandb is not None and alert.wandb.mode != "disabled":
            channels.append("wandb")
        return channels

    def _record(self, alert: Alert, channel: str, status: str, **facts: Any) -> None:
        try:
            record_delivery(self.path, alert.alert_id, channel, status, **facts)
        except OSError as exc:
            self.log.error("cannot record delivery of alert %r in %s: %s", alert.title, self.path, exc)

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

    # ------------------------------------------------------------------ intake

    def _intake_loop(self) -> None:
        while True:
            item = self._intake.get()
            if item is _STOP:
                return
            alert: Alert = item
            channels = self._channels(alert)  # send() recorded the alert with these
            with self._cond:
                if alert.alert_id in self._pending:
                    self._pending[alert.alert_id].channels.update(channels)
            for channel, q in (("webhook", self._webhook_q), ("wandb", self._wandb_q)):
                if channel not in channels:
                    continue
                try:
                    q.put_nowait(alert)
                except queue.Full:
                    self.log.error("%s alert queue full: alert %r dropped for that channel", channel, alert.title)
                    self._record(alert, channel, DROPPED, error="queue full")
                    self._finish(alert.alert_id, channel)
            self._finish(alert.alert_id, "intake")

    # ------------------------------------------------------------------ webhook

    def _webhook_loop(self) -> None:
        while True:
            item = self._webhook_q.get()
            if item is _STOP:
                return
            try:
                self._deliver_webhook(item)
            finally:
                self._finish(item.alert_id, "webhook")

    def _deliver_webhook(self, alert: Alert) -> None:
        assert self.webhook_url
        now = time.monotonic()
        last = self._webhook_last_sent.get(alert.title)
        if last is not None and now - last < self.wait_duration_s:
            self.log.info("alert %r not posted to the webhook: same title %.0fs ago", alert.title, now - last)
            self._record(alert, "webhook", THROTTLED)
            return
        error: WebhookError | None = None
        attempts = 0
        for attempt in range(self.retries + 1):
            attempts = attempt + 1
            try:
                post_webhook(self.webhook_url, alert, self.timeout_s)
            except WebhookError as exc:
                error = exc
                if not exc.retriable or attempt == self.retries or self._pause(attempt):
                    break
                continue
            self._webhook_last_sent[alert.title] = time.monotonic()
            self._record(alert, "webhook", "delivered", attempts=attempts)
            return
        self.log.error("alert %r not delivered to the webhook after %d tries: %s (kept in %s)",
                       alert.title, attempts, error, self.path)
        self._record(alert, "webhook", FAILED, attempts=attempts, error=str(error))

    def _pause(self, attempt: int) -> bool:
        """Back off before retry ``attempt + 1``; True when the dispatcher is stopping instead."""
        return self._stopping.wait(self.retry_delay_s * (2**attempt))

    # ------------------------------------------------------------------ wandb

    def _wandb_loop(self) -> None:
        while True:
            item = self._wandb_q.get()
            if item is _STOP:
                return
            batch = [item]
            stop_after = False
            deadline = time.monotonic() + self.batch_window_s
            while True:  # gather what arrives within the window: one worker run for all of it
                left = deadline - time.monotonic()
                try:
                    more = self._wandb_q.get(timeout=left) if left > 0 else self._wandb_q.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop_after = True
                    break
                batch.append(more)
            try:
                self._deliver_wandb(batch)
            finally:
                for alert in batch:
                    self._finish(alert.alert_id, "wandb")
            if stop_after:
                return

    def _deliver_wandb(self, alerts: list[Alert]) -> None:
        groups: dict[WandbTarget, list[Alert]] = {}
        for alert in alerts:
            assert alert.wandb is not None
            groups.setdefault(alert.wandb, []).append(alert)
        todo = list(groups.items())
        attempts = 0
        last_error = "not tried"
        while todo:
            attempts += 1
            outcome = self._run_worker(todo)
            retry: list[tuple[WandbTarget, list[Alert]]] = []
            results = {r.get("run_id"): r for r in outcome.get("results", [])}
            for target, group in todo:
                result = results.get(target.alert_run_id)
                if result is not None and result.get("ok"):
                    self._wandb_done(group, result, attempts)
                    continue
                source = result if result is not None else outcome
                error = str(source.get("error") or "no result from the wandb worker")
                retriable = bool(source.get("retriable", True))
                last_error = error
                if retriable and attempts <= self.retries:
                    retry.append((target, group))
                else:
                    self._wandb_failed(group, error, attempts)
            if retry and self._pause(attempts - 1):
                for _target, group in retry:
                    self._wandb_failed(group, f"dispatcher stopped before a retry ({last_error})", attempts)
                return
            todo = retry

    def _wandb_done(self, group: list[Alert], result: dict[str, Any], attempts: int) -> None:
        status = result.get("status") or "offline"
        if result.get("note"):
            self.log.warning("W&B alert run %s: %s", result.get("run_id"), result["note"])
        self.log.debug("W&B alerts written (%s, %s): init %.2fs, alert %.3fs, finish %.2fs",
                       status, result.get("run_dir"), result.get("init_s", 0), result.get("alert_s", 0),
                       result.get("finish_s", 0))
        for alert in group:
            self._record(alert, "wandb", status, attempts=attempts, mode=result.get("mode"),
                         run_dir=result.get("run_dir"), run_id=result.get("run_id"), note=result.get("note"))

    def _wandb_failed(self, group: list[Alert], error: str, attempts: int) -> None:
        for alert in group:
            self.log.error("alert %r not delivered to W&B after %d tries: %s (kept in %s)",
                           alert.title, attempts, error, self.path)
            self._record(alert, "wandb", FAILED, attempts=attempts, error=error)

    def _run_worker(self, todo: list[tuple[WandbTarget, list[Alert]]]) -> dict[str, Any]:
        """One wandb worker process for ``todo``; its JSON result, or a failure dict of our own."""
        request = {
            "wait_duration_s": self.wait_duration_s,
            "deadline_s": self.timeout_s,
            "online_init_timeout_s": self.online_init_timeout_s,
            "batches": [{"target": t.to_dict(), "alerts": [a.to_dict() for a in g]} for t, g in todo],
        }
        env = {**os.environ, "WANDB_SILENT": "true", **self.worker_env}
        # Drop systemd's notify socket: only the daemon itself may speak to systemd.
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(key, None)
        try:
            with self._worker_lock:
                if self._stopping.is_set():
                    return {"ok": False, "error": "dispatcher stopping", "retriable": False}
                proc = subprocess.Popen(
                    [self.python, "-m", "supervisor.alerts.wandb_worker"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=self.state_dir,  # wandb looks around its cwd (git, settings): not the daemon's
                    env=env,
                    start_new_session=True,  # its own group: a timeout kills wandb's service process too
                )
                self._worker = proc
        except OSError as exc:
            return {"ok": False, "error": f"cannot start the wandb worker {self.python!r}: {exc}", "retriable": False}
        try:
            out, err = proc.communicate(json.dumps(request, default=str).encode(), timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self._kill_group(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)  # reap it; a grandchild holding the pipes must not hang us
            return {"ok": False, "error": f"wandb worker timed out after {self.timeout_s:g}s", "retriable": True}
        finally:
            with self._worker_lock:
                self._worker = None
        if err.strip():
            self.log.debug("wandb worker stderr: %s", err.decode(errors="replace")[-4000:])
        result = _last_json_line(out)
        if result is None:
            tail = " ".join(err.decode(errors="replace").split()[-40:])
            return {"ok": False, "retriable": True,
                    "error": f"wandb worker exited with status {proc.returncode} without a result: {tail}"}
        return result

    def _kill_worker(self) -> None:
        with self._worker_lock:
            proc = self._worker
        if proc is not None:
            self._kill_group(proc)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def _last_json_line(out: bytes) -> dict[str, Any] | None:
    for line in reversed(out.decode(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None
