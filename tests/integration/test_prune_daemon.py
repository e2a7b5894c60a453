"""``supervisorctl list`` and ``prune`` against a real daemon and real trainer processes (the fake trainer),
then a daemon SIGKILLed and started again after the prune adopts the job that runs (issue 35)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import live_checkpoints
from tests.support.harness import DaemonProc, wait_for, write_config

pytestmark = pytest.mark.e2e


def test_prune_keeps_what_runs_and_the_best_checkpoints_and_a_restart_adopts_the_job(daemon: DaemonProc) -> None:
    gate = daemon.workdir / "go"
    running = daemon.submit(write_config(daemon.workdir, "long", steps=40, step_time=0.05, ckpt_every=5,
                                         hold_until=str(gate)))
    short = write_config(daemon.workdir, "short", steps=20, step_time=0.01, ckpt_every=5)
    finished = [daemon.submit(short) for _ in range(2)]
    done = {j: daemon.wait_state(j, "completed") for j in finished}
    pid = daemon.live_pid(running, 1)
    best = {j: done[j]["best_checkpoint"]["path"] for j in finished}
    assert all(Path(b).name != "last.ckpt" for b in best.values())

    # list: the finished ones are summaries, with the best checkpoint's facts from the store
    listed = json.loads(daemon.ctl("list", "--json").stdout)
    assert listed[0]["id"] == running and {j["id"] for j in listed[1:]} == set(finished)
    summary = listed[1]
    full = done[summary["id"]]["best_checkpoint"]
    assert summary["summary"] is True and summary["global_step"] == 20
    assert summary["best_checkpoint"] == {k: full[k] for k in ("path", "step", "score", "monitor")}
    table = daemon.ctl("list", "--limit", "1").stdout
    assert "showing the latest 1 of 2 finished jobs" in table and running in table
    assert [j["id"] for j in json.loads(daemon.ctl("list", "--state", "running", "--json").stdout)] == [running]

    dry = json.loads(daemon.ctl("prune", "--older-than", "0s", "--dry-run", "--json").stdout)
    assert {j["job"] for j in dry["jobs"]} == set(finished)  # never the running job
    assert all(Path(p).exists() for j in dry["jobs"] for p in j["remove"])
    real = json.loads(daemon.ctl("prune", "--older-than", "0s", "--json").stdout)
    assert [(j["job"], j["remove"], j["keep"], j["skipped"]) for j in real["jobs"]] == [
        (j["job"], j["remove"], j["keep"], None) for j in dry["jobs"]]
    for j in real["jobs"]:
        assert not any(Path(p).exists() for p in j["remove"])
        assert Path(best[j["job"]]).is_file()
        layout = JobLayout(Path(j["job_dir"]))
        assert [e.path for e in live_checkpoints(layout.manifest)] == [best[j["job"]]]
        assert not layout.attempts.exists()
    text = daemon.ctl("prune", "--older-than", "0s", "--dry-run").stdout
    assert "would remove: 0 jobs" in text

    daemon.kill(signal.SIGKILL)  # the daemon dies; its trainer goes on
    daemon.start()
    assert daemon.live_pid(running, 1) == pid  # adopted, not relaunched
    gate.touch()
    final = daemon.wait_state(running, "completed")
    assert len(final["attempts"]) == 1 and final["restarts"] == 0
    everything = {j["id"]: j for j in json.loads(daemon.ctl("list", "--all", "--json").stdout)}
    assert set(everything) == {running, *finished}
    assert all(everything[j]["pruned_at"] is not None for j in finished)
    refused = daemon.ctl("restart", finished[0], check=False)
    assert refused.returncode != 0 and "was pruned" in refused.stderr
    wait_for(lambda: daemon.status(running)["best_checkpoint"], what="the running job's best checkpoint")
