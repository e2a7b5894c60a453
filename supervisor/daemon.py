"""The daemon process: the core, its API socket, signals, and the optional parts (GPUs, alerts, web).

``ml-supervisor serve`` runs ``Daemon.serve()``; ``ml-supervisor run`` runs the
same daemon in-process for one job.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from supervisor.api.ops import Operations
from supervisor.api.server import ApiServer
from supervisor.core import Supervisor
from supervisor.settings import DaemonSettings

log = logging.getLogger("ml_supervisor")


class Daemon:
    """Owns a ``Supervisor`` and everything around it."""

    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.supervisor = Supervisor(settings)
        self.ops = Operations(self.supervisor)
        self.api: ApiServer | None = None

    def start(self) -> None:
        """Open the state dir (lock, store, reconcile), start the API and the loop thread."""
        self.supervisor.open()
        self.api = ApiServer(self.ops, self.supervisor.state_dir)
        self.api.start()
        self.supervisor.start_thread()
        log.info("ml-supervisor serving %s (socket %s)", self.supervisor.state_dir, self.api.path)

    def stop(self) -> None:
        """Stop serving; running trainers keep running (they are adopted on the next start)."""
        if self.api is not None:
            self.api.stop()
            self.api = None
        self.supervisor.close()

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT. Handlers only set a flag; this thread does the work."""
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            log.info("ml-supervisor stopping; running trainers are left running")
            self.stop()
        return 0
