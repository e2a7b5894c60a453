"""Daemon logging: journald-friendly lines on stderr.

Under systemd (``JOURNAL_STREAM`` set) each line starts with an sd-daemon
priority prefix (``<3>`` error ... ``<7>`` debug) so ``journalctl -p`` works;
on a terminal, plain timestamped lines; never colour codes when not a TTY.
"""

from __future__ import annotations

import logging
import sys

from supervisor.sdnotify import stderr_is_journal

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        text = super().format(record)
        return "\n".join(prefix + line for line in text.splitlines())


def setup_logging(level: int = logging.INFO, *, stream: object = None) -> None:
    """Configure the ``ml_supervisor`` loggers once for the process."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if stderr_is_journal():
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                               datefmt="%Y-%m-%d %H:%M:%S"))
    # "ml_supervisor" is the core's logger; modules that log by __name__ live under "supervisor".
    for name in ("ml_supervisor", "supervisor"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
