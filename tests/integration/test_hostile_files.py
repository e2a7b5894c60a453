"""A trainer's files are untrusted input (issue 33): a FIFO, a 50 GB sparse file, a directory or a link to
``/dev/zero`` in place of every file the daemon reads of a job must not freeze or bloat the daemon.

Real daemon, real files: a victim job's trainer stops writing (``hang_at``), then each file the daemon reads
of it (heartbeat, exit record, the monitor's exit file, manifest, metrics, stacks, logs) is replaced by the
hostile kind. The daemon keeps answering (``status`` of the other job and of the victim, the victim's logs,
each within 2 s), its memory stays bounded, the other job's restart after a SIGKILL is not held up, and the
victim's attempt, SIGKILLed, ends as a crash without touching the other job.

Before (``atomic.read_json`` opened and read whole): the FIFO held the loop and every API thread that read
the victim's files in ``open()`` for good (``status`` did not answer, the other job was never restarted);
the sparse heartbeat was read whole (50 GB: the OOM killer).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.api.client import Client
from tests.support.chaos_hostile import job_files, plant
from tests.support.harness import DaemonProc, wait_for, write_config

pytestmark = pytest.mark.e2e

KINDS = ("fifo", "sparse", "directory", "link")
ANSWER_S = 2.0
RSS_LIMIT_MB = 400  # the daemon's usual RSS is ~60-90 MB; a 50 GB file read whole would be far past it


def timed(client: Client, op: str, **args: Any) -> tuple[Any, float]:
    start = time.monotonic()
    answer = client.call(op, **args)
    return answer, time.monotonic() - start


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_file_in_place_of_each_job_file_holds_up_no_other_job(daemon: DaemonProc, kind: str) -> None:
    assert daemon.proc is not None
    daemon_pid = daemon.proc.pid
    other = daemon.submit(write_config(daemon.workdir, "other", steps=100_000, step_time=0.02, ckpt_every=20))
    victim = daemon.submit(write_config(daemon.workdir, "victim", steps=1000, step_time=0.02, ckpt_every=5,
                                        hang_at=15, val_every=5, supervision={"max_restarts": 0}))
    victim_pid = daemon.live_pid(victim, 1)
    wait_for(lambda: daemon.status(victim)["global_step"] >= 10, what="the victim's progress")
    time.sleep(0.3)  # at step 15 it stops writing: what is planted now stays
    for path in job_files(Path(daemon.status(victim)["job_dir"]), 1):
        plant(path, kind)  # 50 GB sparse: no block written
    client = Client(daemon.state_dir, timeout=10)
    baseline_mb = rss_mb(daemon_pid)

    # The daemon answers about both jobs while it polls the victim (tick 0.5 s) several times.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        for op, args in (("status", {"job": other}), ("status", {"job": victim}),
                         ("logs", {"job": victim, "offsets": {"stdout": 0, "stderr": 0}})):
            _, took = timed(client, op, **args)
            assert took < ANSWER_S, f"{op} {args} took {took:.1f}s with a {kind} in place of the victim's files"
        time.sleep(0.2)
    assert rss_mb(daemon_pid) < max(RSS_LIMIT_MB, baseline_mb + 100)

    # The other job's restart after a SIGKILL is not held up by the victim's files.
    other_pid = daemon.live_pid(other, 1)
    killed_at = time.monotonic()
    os.kill(other_pid, signal.SIGKILL)
    daemon.live_pid(other, 2, timeout=15)
    restart_s = time.monotonic() - killed_at
    assert restart_s < 10, f"the other job took {restart_s:.1f}s to restart"

    # The victim's attempt, SIGKILLed, ends as a crash (its exit record and manifest unreadable: no record,
    # no checkpoint), said so; max_restarts 0: the job fails, and nothing else is touched.
    os.kill(victim_pid, signal.SIGKILL)
    ended = daemon.wait_state(victim, "failed", timeout=30)
    first = ended["attempts"][0]
    assert first["reason"] in ("crash", "vanished"), first
    assert rss_mb(daemon_pid) < max(RSS_LIMIT_MB, baseline_mb + 100)

    now = daemon.status(other)  # untouched: running its second attempt, one restart, the first a crash
    assert now["state"] == "running" and now["restarts"] == 1 and now["attempts"][0]["reason"] == "crash"
    log = daemon.log.read_text()
    if kind != "sparse":  # a sparse file is a regular file: it is over its cap (heartbeat, manifest), or a log
        assert "is not read: it is" in log, log[-3000:]
    else:
        assert "over the" in log, log[-3000:]
