"""A zygote still importing is paused while a cold attempt of its job imports (its imports beside the attempt's cost
the attempt 1.6 s of 5.7 on 2 cores), and goes on at the next prepare; a ready one is never paused."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from supervisor.runners.zygote import Zygote, ZygoteState


def state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def wait_state(pid: int, wanted: str) -> str:
    deadline = time.monotonic() + 5
    while state_of(pid) != wanted and time.monotonic() < deadline:
        time.sleep(0.01)
    return state_of(pid)


def test_pause_stops_an_importing_zygote_and_resume_lets_it_go_on(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    zygote = Zygote(job_id="j", proc=proc, reply_fd=os.open(os.devnull, os.O_RDONLY), job_dir=tmp_path,
                    config_path=tmp_path / "c.yaml", config_mtime=0.0)
    try:
        zygote.pause()
        assert zygote.paused and wait_state(proc.pid, "T") == "T"
        zygote.resume()
        assert not zygote.paused and wait_state(proc.pid, "S") == "S"
        zygote.state = ZygoteState.READY
        zygote.pause()  # ready: it forks standbys in milliseconds and computes nothing; never paused
        assert not zygote.paused and state_of(proc.pid) == "S"
        zygote.state = ZygoteState.IMPORTING
        zygote.pause()
        zygote.stop()  # a paused zygote is killed and reaped all the same
        assert proc.poll() is not None
    finally:
        proc.kill()
        proc.wait()
