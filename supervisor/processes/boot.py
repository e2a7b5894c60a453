"""This boot's identity: a pid and a start time name a process only within one boot."""

from __future__ import annotations

import os
from pathlib import Path


def current_boot_id() -> str:
    """This boot's id; ``ML_SUPERVISOR_BOOT_ID`` overrides it (tests simulate a reboot with it)."""
    override = os.environ.get("ML_SUPERVISOR_BOOT_ID")
    if override:
        return override
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"

