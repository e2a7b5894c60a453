"""A DDP job's standby under the real daemon: one standby process per rank, the fake trainer playing them.

The fake trainer plays each standby rank with the real trainer's protocol (``trainer.standby``: its
ready file, the handover, the environment, the job's lock through the open file every rank inherited)
and then trains as the attempt it was handed, so each scenario takes seconds. The real Lightning ranks
(gloo) are ``tests/e2e/test_standby.py``'s DDP test.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from supervisor.jobfiles.atomic import read_json
from supervisor.jobfiles.layout import AttemptLayout, JobLayout
from supervisor.jobfiles.monitorfiles import MonitorStart, read_monitor_exit, read_monitor_start
from tests.support.chaos_checks import TrainerSampler
from tests.support.harness import DaemonProc, wait_for, write_config
from tests.support.resume_oracle import best_not_newest

pytestmark = pytest.mark.e2e

STEPS = 150


def _ddp_job(d: DaemonProc, name: str, **init: Any) -> Path:
    path = write_config(d.workdir, name, supervision={"standby": "on"}, steps=STEPS, step_time=0.05, ckpt_every=5,
                        heartbeat_every=0.2, **init)
    cfg = yaml.safe_load(path.read_text())
    cfg["trainer"] = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ready_standby(d: DaemonProc, job: str, attempt: int, not_pid: int | None = None) -> MonitorStart:
    """The standby for ``attempt`` once every rank of it is ready: its monitor.json (both rank pids)."""
    attempt_dir = JobLayout(Path(d.status(job)["job_dir"])).attempt(attempt).dir

    def ready() -> MonitorStart | None:
        standby = d.status(job)["standby"]
        if not standby or standby["state"] != "ready" or standby["pid"] == not_pid:
            return None
        return read_monitor_start(attempt_dir / "monitor.json")

    start = wait_for(ready, timeout=60, interval=0.1, what=f"a ready 2-rank standby for attempt {attempt}")
    assert start.world_size == 2 and sorted(start.pids()) == [0, 1]
    view = d.status(job)["standby"]
    assert view["pid"] == start.pids()[0]
    # every rank is shown, and the standby's memory is all of theirs
    assert {r["rank"]: r["pid"] for r in view["ranks"]} == start.pids()
    assert all(r["rss_mb"] > 5 for r in view["ranks"])
    assert view["rss_mb"] == pytest.approx(sum(r["rss_mb"] for r in view["ranks"]), abs=0.2)
    for rank in (0, 1):
        assert (attempt_dir / f"standby-ready.rank{rank}.json").exists()
    assert not (attempt_dir / "standby-ready.json").exists()  # never "ready" on one rank's word
    return start


def _port_of(attempt: AttemptLayout) -> int | None:
    """The MASTER_PORT an attempt's ranks train with: its monitor's choice (a cold start) or the handover's
    (a promoted standby, as attempt 1 is when it was started beside submit's import check)."""
    started = read_monitor_start(attempt.monitor_start)
    if started is not None and started.master_port:
        return started.master_port
    handover = read_json(attempt.dir / "handover.json")
    return handover.get("master_port") if isinstance(handover, dict) else None


def _env(pid: int) -> dict[str, str]:
    return psutil.Process(pid).environ()


def test_a_rank_killed_hands_every_rank_to_the_standby_with_its_own_rank_and_a_fresh_port(
        daemon: DaemonProc) -> None:
    d = daemon
    job = d.submit(_ddp_job(d, "ddp-standby"))
    standby = _ready_standby(d, job, 2)
    attempt1 = JobLayout(Path(d.status(job)["job_dir"])).attempt(1)
    running, running_port = read_monitor_start(attempt1.monitor_start), _port_of(attempt1)
    assert running is not None and running_port
    for rank, pid in standby.pids().items():  # each standby rank has its rank's environment, but no port yet
        env = _env(pid)
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == (str(rank), str(rank), "2")
        assert "MASTER_PORT" not in env and standby.master_port is None
    sampler = TrainerSampler(d.state_dir, interval=0.05)
    sampler.start()
    try:
        wait_for(lambda: d.status(job)["global_step"] >= 20, timeout=60, what="attempt 1 past step 20")
        os.kill(running.pids()[1], signal.SIGKILL)
        final = d.wait_state(job, "completed", "failed", timeout=120)
    finally:
        sampler.stop()
    assert final["state"] == "completed", final["detail"]
    first, second = final["attempts"]
    assert (first["reason"], first["detail"]) == ("crash", "rank 1 killed by SIGKILL")
    job_dir = JobLayout(Path(final["job_dir"]))
    # by the manifest's lines of attempt 1 (the standby trains within a second: not the status's best now)
    best = best_not_newest(final["job_dir"], 2)
    assert second["pid"] == standby.pids()[0] and second["resumed_from"] == best
    assert final["global_step"] == STEPS
    after = read_monitor_start(job_dir.attempt(2).monitor_start)
    assert after is not None and after.pids() == standby.pids()  # the same processes, recorded as a cold attempt's
    ended = read_monitor_exit(job_dir.attempt(1).monitor_exit)
    handover = read_json(job_dir.attempt(2).dir / "handover.json")
    assert ended is not None and isinstance(handover, dict)
    port = handover["master_port"]
    assert port and port != running_port
    for rank in (0, 1):
        seen = json.loads((job_dir.attempt(2).dir / f"handover-env.rank{rank}.json").read_text())
        assert (seen["RANK"], seen["LOCAL_RANK"], seen["WORLD_SIZE"]) == (str(rank), str(rank), "2")
        assert (seen["MASTER_PORT"], seen["ML_SUPERVISOR_ATTEMPT"]) == (str(port), "2")
        assert seen["time"] >= ended.ended_at  # no rank trained while a process of attempt 1 lived
    assert sampler.samples > 10 and sampler.violations_for(job) == []


def test_a_standby_rank_that_dies_makes_the_whole_standby_replaced(daemon: DaemonProc) -> None:
    d = daemon
    job = d.submit(_ddp_job(d, "ddp-standby-dies"))
    old = _ready_standby(d, job, 2)
    os.kill(old.pids()[1], signal.SIGKILL)
    # the standby's monitor stops its other rank; the daemon drops the standby and prepares a fresh one
    wait_for(lambda: not psutil.pid_exists(old.pids()[0]) and not psutil.pid_exists(old.monitor_pid), timeout=30,
             what="the rest of the broken standby gone")
    fresh = _ready_standby(d, job, 2, not_pid=old.pids()[0])
    assert set(fresh.pids().values()).isdisjoint(old.pids().values())
    running = read_monitor_start(JobLayout(Path(d.status(job)["job_dir"])).attempt(1).monitor_start)
    assert running is not None
    os.kill(running.pids()[0], signal.SIGKILL)
    final = d.wait_state(job, "completed", "failed", timeout=120)
    assert final["state"] == "completed", final["detail"]
    assert [a["reason"] for a in final["attempts"]] == ["crash", "completed"]
    assert final["attempts"][1]["pid"] == fresh.pids()[0]
    assert final["global_step"] == STEPS


def test_a_job_with_a_fixed_master_port_gets_it_back_at_the_handover(daemon: DaemonProc) -> None:
    d = daemon
    path = _ddp_job(d, "ddp-standby-port")
    cfg = yaml.safe_load(path.read_text())
    port = _free_port()
    cfg["env"] = {"MASTER_PORT": str(port)}
    path.write_text(yaml.safe_dump(cfg))
    job = d.submit(path)
    _ready_standby(d, job, 2)  # prepared while attempt 1 holds the port: the standby waits without one
    attempt1 = JobLayout(Path(d.status(job)["job_dir"])).attempt(1)
    running = read_monitor_start(attempt1.monitor_start)
    assert running is not None and _port_of(attempt1) == port
    os.kill(running.pids()[1], signal.SIGKILL)
    final = d.wait_state(job, "completed", "failed", timeout=120)
    assert final["state"] == "completed", final["detail"]
    attempt2 = JobLayout(Path(final["job_dir"])).attempt(2).dir
    assert final["attempts"][1]["pid"] == json.loads((attempt2 / "handover-env.rank0.json").read_text())["pid"]
    for rank in (0, 1):
        assert json.loads((attempt2 / f"handover-env.rank{rank}.json").read_text())["MASTER_PORT"] == str(port)


def _free_port() -> int:
    from supervisor.processes.ports import free_port

    return free_port()
