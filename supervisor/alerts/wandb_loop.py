"""The ``alerts-wandb`` thread: batch alerts, group them per job's W&B run, run one worker process per batch.

wandb is imported only by the worker (``python -m supervisor.alerts.wandb_worker``),
never by the daemon. The worker is killed at ``timeout_s`` and retried while its
failure is retriable; one run costs ~1.5-2 s, hence the batching window.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor.alerts.delivery import STOP, DeliveryLedger, Retry
from supervisor.alerts.model import Alert, WandbTarget
from supervisor.alerts.store import FAILED


class WandbLoop:
    """Deliver the alerts put on ``inbox`` to W&B until it reads ``STOP``.

    ``python`` runs the worker (it must import ``supervisor`` and ``wandb``), in
    ``state_dir`` with ``worker_env`` added to the daemon's environment.
    ``batch_window_s`` is how long to wait for more alerts to share one worker run;
    ``online_init_timeout_s`` bounds an online ``wandb.init`` before the worker
    falls back to writing the alert offline.
    """

    def __init__(self, inbox: queue.Queue[Any], ledger: DeliveryLedger, *, state_dir: Path, python: str,
                 worker_env: Mapping[str, str], wait_duration_s: float, timeout_s: float, retry: Retry,
                 batch_window_s: float, online_init_timeout_s: float) -> None:
        self.inbox = inbox
        self.ledger = ledger
        self.state_dir = state_dir
        self.python = python
        self.worker_env = dict(worker_env)
        self.wait_duration_s = wait_duration_s
        self.timeout_s = timeout_s
        self.retry = retry
        self.batch_window_s = batch_window_s
        self.online_init_timeout_s = online_init_timeout_s
        self._worker: subprocess.Popen[bytes] | None = None  # the running worker, for kill_worker()
        self._worker_lock = threading.Lock()

    def run(self) -> None:
        """The thread's body: gather a batch, deliver it, finish each of its alerts in the ledger."""
        while True:
            item = self.inbox.get()
            if item is STOP:
                return
            batch = [item]
            stop_after = False
            deadline = time.monotonic() + self.batch_window_s
            while True:  # gather what arrives within the window: one worker run for all of it
                left = deadline - time.monotonic()
                try:
                    more = self.inbox.get(timeout=left) if left > 0 else self.inbox.get_nowait()
                except queue.Empty:
                    break
                if more is STOP:
                    stop_after = True
                    break
                batch.append(more)
            try:
                self._deliver(batch)
            finally:
                for alert in batch:
                    self.ledger.finish(alert.alert_id, "wandb")
            if stop_after:
                return

    def kill_worker(self) -> None:
        """Kill the running worker process, if any, and its whole process group."""
        with self._worker_lock:
            proc = self._worker
        if proc is not None:
            _kill_group(proc)

    def _deliver(self, alerts: list[Alert]) -> None:
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
                    self._done(group, result, attempts)
                    continue
                source = result if result is not None else outcome
                error = str(source.get("error") or "no result from the wandb worker")
                retriable = bool(source.get("retriable", True))
                last_error = error
                if retriable and attempts <= self.retry.retries:
                    retry.append((target, group))
                else:
                    self._failed(group, error, attempts)
            if retry and self.retry.pause(attempts - 1):
                for _target, group in retry:
                    self._failed(group, f"dispatcher stopped before a retry ({last_error})", attempts)
                return
            todo = retry

    def _done(self, group: list[Alert], result: dict[str, Any], attempts: int) -> None:
        log = self.ledger.log
        status = result.get("status") or "offline"
        if result.get("note"):
            log.warning("W&B alert run %s: %s", result.get("run_id"), result["note"])
        log.debug("W&B alerts written (%s, %s): init %.2fs, alert %.3fs, finish %.2fs",
                  status, result.get("run_dir"), result.get("init_s", 0), result.get("alert_s", 0),
                  result.get("finish_s", 0))
        for alert in group:
            self.ledger.record(alert, "wandb", status, attempts=attempts, mode=result.get("mode"),
                               run_dir=result.get("run_dir"), run_id=result.get("run_id"), note=result.get("note"))

    def _failed(self, group: list[Alert], error: str, attempts: int) -> None:
        for alert in group:
            self.ledger.log.error("alert %r not delivered to W&B after %d tries: %s (kept in %s)",
                                  alert.title, attempts, error, self.ledger.path)
            self.ledger.record(alert, "wandb", FAILED, attempts=attempts, error=error)

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
                if self.retry.stopping.is_set():
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
            _kill_group(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)  # reap it; a grandchild holding the pipes must not hang us
            return {"ok": False, "error": f"wandb worker timed out after {self.timeout_s:g}s", "retriable": True}
        finally:
            with self._worker_lock:
                self._worker = None
        if err.strip():
            self.ledger.log.debug("wandb worker stderr: %s", err.decode(errors="replace")[-4000:])
        result = _last_json_line(out)
        if result is None:
            tail = " ".join(err.decode(errors="replace").split()[-40:])
            return {"ok": False, "retriable": True,
                    "error": f"wandb worker exited with status {proc.returncode} without a result: {tail}"}
        return result


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def _last_json_line(out: bytes) -> dict[str, Any] | None:
    """The worker's result: the last stdout line that parses as a JSON object (wandb may print above it)."""
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
