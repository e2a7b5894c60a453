"""An attempt that waits for its zygote's imports gives the zygote the daemon's priority back (it imports at the
standby's niceness, as background work)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from supervisor.runners.zygote import Zygote
from tests.support.harness import wait_for


@pytest.mark.skipif(os.geteuid() != 0, reason="lowering a niceness needs root (the zygote is niced only as root)")
def test_hurry_gives_a_niced_zygote_the_daemons_priority(tmp_path: Path) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    proc = subprocess.Popen(["nice", "-n", "10", "sleep", "30"])
    zygote = Zygote(job_id="j", proc=proc, reply_fd=os.open(os.devnull, os.O_RDONLY), job_dir=tmp_path,
                    config_path=tmp_path / "c.yaml", config_mtime=0.0)
    try:
        niced = min(base + 10, 19)
        wait_for(lambda: os.getpriority(os.PRIO_PROCESS, proc.pid) == niced, timeout=5, what="nice to run")
        zygote.hurry()
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == base
    finally:
        zygote.stop()
