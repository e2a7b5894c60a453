"""The daemon process: the core, its API socket, signals, and the optional parts (GPUs, alerts, web).

``ml-supervisor serve`` runs ``Daemon.serve()``; ``ml-supervisor run`` runs the
same daemon in-process for one job.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from supervisor.alerts import AlertDispatcher, alert_for_job
from supervisor.alerts.events import AlertEvent
from supervisor.api.ops import Operations
from supervisor.api.server import ApiServer
from supervisor.core import Supervisor
from supervisor.errors import SupervisorError
from supervisor.jobfiles import deadline
from supervisor.rules.states import JobState
from supervisor.sdnotify import Notifier
from supervisor.settings import DaemonSettings
from supervisor.store import JobRow
from supervisor.sweep.alerts import sweep_alert
from supervisor.sweep.files import SweepDir
from supervisor.sweep.manager import SweepManager

log = logging.getLogger("ml_supervisor")


class Daemon:
    """Owns a ``Supervisor`` and everything around it."""

    def __init__(self, settings: DaemonSettings, *, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier(None)
        self.alerts = AlertDispatcher(Path(str(settings.state_dir)), webhook_url=settings.alerts.webhook_url,
                                      wait_duration_s=settings.alerts.wait_duration)
        self.supervisor = Supervisor(settings, alert_hook=self._alert)
        self.supervisor.on_loop = self._on_loop
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            self.supervisor.loop_wait = min(self.supervisor.loop_wait, interval)
        if self.notifier.enabled:
            self.supervisor.loop_wait = min(self.supervisor.loop_wait, 1.0)  # STATUS= stays current
        self.ops = Operations(self.supervisor)
        self.api: ApiServer | None = None
        self.sweeps = SweepManager(Path(str(settings.state_dir)), on_finished=self._sweep_finished)
        self.ops.sweeps = self.sweeps
        self.web: Any = None  # supervisor.web.service.WebService, imported only when the page is on
        self._status = ""
        self._ready = threading.Event()  # STATUS= only after READY=1 (systemd shows both; order them)

    def start(self) -> None:
        """Open the state dir (lock, store, reconcile), start alerts, the API and the loop thread."""
        self.alerts.start()
        # From here on a job's file that does not answer (a hung NFS mount) costs that job, not the loop.
        deadline.enable(self.settings.file_timeout)
        self.supervisor.open()
        self.api = ApiServer(self.ops, self.supervisor.state_dir, group=self.settings.access.group,
                             admin_group=self.settings.access.admin_group)
        self.api.start()
        self.supervisor.start_thread()
        log.info("ml-supervisor serving %s (socket %s)", self.supervisor.state_dir, self.api.path)
        if self.settings.web.enabled:
            self._start_web()
        self.notifier.ready()
        self._ready.set()
        # Last: sweep workers talk to the daemon through the API; starting them never delays READY=1.
        self.sweeps.start()

    def stop(self) -> None:
        """Stop serving; running trainers keep running (they are adopted on the next start)."""
        self.notifier.stopping()
        if self.web is not None:
            self.web.stop()
            self.web = None
        self.sweeps.stop()
        if self.api is not None:
            self.api.stop()
            self.api = None
        self.supervisor.close()
        self.alerts.stop(timeout_s=10)

    def _start_web(self) -> None:
        # FastAPI and uvicorn load only here: `ml-supervisor run` and page-less daemons never pay for them.
        from supervisor.web.service import WebService

        web = WebService(self.ops, self.settings.web, self.supervisor.state_dir, gpus=self.ops.op_gpus)
        try:
            web.start()  # returns the URL with the token: not for the log
        except SupervisorError as exc:  # e.g. the port is taken: supervising matters more than the page
            log.error("%s; serving without the web page", exc.message)
            return
        self.web = web
        # Never the URL with its token: journals are often readable by other users. The owner gets
        # the full URL from `supervisorctl web-url` (it reads the owner-only token file).
        log.info("web page: %s (open the URL `supervisorctl web-url` prints)", web.url)

    def _alert(self, job: JobRow, event: AlertEvent) -> None:
        alert = alert_for_job(event.event, job_id=job.id, job_name=job.name, job_dir=job.job_dir,
                              cfg=self.supervisor.job_config(job), details=event.details(), alert_id=event.alert_id)
        if alert is not None:
            self.alerts.send(alert)  # the dispatcher also writes it to the daemon's log

    def _sweep_finished(self, sweep: SweepDir, state: dict[str, Any]) -> None:
        alert = sweep_alert(sweep, state)
        if alert is not None:
            self.alerts.send(alert)

    def _on_loop(self) -> None:
        """Every turn of the supervisor loop (its thread): the systemd watchdog ping, and STATUS= on change.

        Pinging from the loop itself means a hung loop stops the pings and systemd restarts us.
        """
        self.notifier.watchdog_tick()
        store = self.supervisor.store
        if store is None or not self.notifier.enabled or not self._ready.is_set():
            return
        counts = {state: 0 for state in (JobState.RUNNING, JobState.QUEUED, JobState.BACKOFF)}
        for job in store.list_jobs(states=list(counts)):
            counts[job.state] += 1
        status = (f"{counts[JobState.RUNNING]} running, {counts[JobState.QUEUED]} queued, "
                  f"{counts[JobState.BACKOFF]} in backoff")
        if status != self._status:
            self._status = status
            self.notifier.status(status)

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT. Handlers only set a flag; this thread does the work."""
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGHUP, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            log.info("ml-supervisor stopping; running trainers are left running")
            self.stop()
        return 0
