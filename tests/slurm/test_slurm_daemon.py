"""The Slurm backend for real: a real daemon submitting to the local two-node cluster (sbatch, srun,
scancel, squeue), the fake trainer as the ranks (no torch: the file contracts), real signals."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.alerts import read_alerts
from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.layout import JobLayout
from tests.support.harness import DaemonProc, wait_for, write_config
from tests.support.resume_oracle import best_not_newest, resume_for
from tests.support.slurm_cluster import Cluster, fake_ranks

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]


def _squeue(cluster: Cluster, job: str) -> list[str]:
    """Our Slurm jobs of ``job`` that Slurm has not finished (pending, running, completing)."""
    out = cluster.run("squeue", "-h", f"--name=mlsup-{job}", "-o", "%i %T").stdout
    return [line for line in out.splitlines() if line.strip()]


def _ranks(d: DaemonProc, job: str) -> dict[int, psutil.Process]:
    """The job's live trainer processes by Slurm rank."""
    return fake_ranks(job)


def _attempt_running(d: DaemonProc, job: str, n: int, step: int = 1) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        st = d.status(job)
        ok = st["state"] == "running" and len(st["attempts"]) == n and st["global_step"] >= step
        return st if ok else None

    return wait_for(running, timeout=90, interval=0.3, what=f"attempt {n} of {job} running at step {step}")


def test_two_node_job_completes_and_status_shows_slurm_job_and_nodes(slurm_daemon: DaemonProc,
                                                                      slurm_cluster: Cluster) -> None:
    cfg = write_config(slurm_daemon.workdir, "two", supervision={"backend": "slurm"},
                       steps=30, step_time=0.05, ckpt_every=5)
    cfg.write_text(cfg.read_text() + "slurm:\n  nodes: 2\n  ntasks_per_node: 1\n")
    job = slurm_daemon.submit(cfg)
    final = slurm_daemon.wait_state(job, "completed", "failed", timeout=120)
    assert final["state"] == "completed" and final["end_reason"] == "finished"
    (attempt,) = final["attempts"]
    assert attempt["reason"] == "completed" and attempt["slurm_state"] == "COMPLETED"
    assert attempt["slurm_job_id"].isdigit() and attempt["nodes"] == "n[1-2]"
    # both nodes ran a rank and saw the state dir (the shared-filesystem probe)
    attempt_dir = JobLayout(Path(final["job_dir"])).attempt(1).dir
    assert sorted(p.name for p in (attempt_dir / "probe").iterdir()) == ["n1", "n2"]
    stdout = (attempt_dir / "stdout.log").read_text()
    assert "fake trainer rank 1 on n2" in stdout and "fake trainer attempt 1 from step 0" in stdout
    end = json.loads((attempt_dir / "slurm-end.json").read_text())
    assert end["exit_code"] == 0 and end["slurm_job_id"] == attempt["slurm_job_id"]
    # the batch script: one owner of restarts, a checkpoint signal before the time limit
    script = (attempt_dir / "slurm-batch.sh").read_text()
    assert "#SBATCH --no-requeue" in script and "#SBATCH --signal=USR1@120" in script
    assert "srun --kill-on-bad-exit=1" in script
    table = slurm_daemon.ctl("status", job).stdout
    assert f"slurm {attempt['slurm_job_id']}.1" in table and "n[1-2]" in table  # allocation.step (0: the probe)
    # the allocation, held for restarts inside it, is given back once the job has ended
    wait_for(lambda: _squeue(slurm_cluster, job) == [], timeout=30, what="the allocation given back")


def _submit_with_a_spare(d: DaemonProc, name: str, *, steps: int, step_time: float) -> str:
    """A fake job of two nodes and one spare (the allocation is n[1-3], the steps run on two of them), two
    restarts inside it; its id."""
    cfg = write_config(d.workdir, name, supervision={"backend": "slurm"}, steps=steps, step_time=step_time,
                       ckpt_every=5)
    cfg.write_text(cfg.read_text() + "slurm:\n  nodes: 2\n  ntasks_per_node: 1\n  spare_nodes: 1\n"
                   "  in_allocation_restarts: 2\n")
    return d.submit(cfg)


def test_a_killed_rank_restarts_inside_the_allocation_then_on_the_spare_when_its_node_drains(
        slurm_daemon: DaemonProc, slurm_cluster: Cluster) -> None:
    job = _submit_with_a_spare(slurm_daemon, "kill", steps=60, step_time=0.1)
    _attempt_running(slurm_daemon, job, 1, step=12)
    ranks = wait_for(lambda: (r := _ranks(slurm_daemon, job)) and len(r) == 2 and r, what="both ranks")
    ranks[1].send_signal(signal.SIGKILL)  # the rank on n2: srun --kill-on-bad-exit ends the step, not the job
    st = _attempt_running(slurm_daemon, job, 2, step=1)
    assert st["attempts"][1]["slurm_job_id"] == st["attempts"][0]["slurm_job_id"]  # the same allocation, no queue
    assert st["attempts"][1]["resumed_from"] == best_not_newest(st["job_dir"], 2)
    wait_for(lambda: slurm_daemon.status(job)["global_step"] >= 20, timeout=60, what="attempt 2 at step 20")
    # n2 drains (an admin, a health check): the next step leaves it out and takes the spare n3
    assert slurm_cluster.run("scontrol", "update", "nodename=n2", "state=drain", "reason=test").returncode == 0
    ranks = wait_for(lambda: (r := _ranks(slurm_daemon, job)) and len(r) == 2 and r, what="both ranks")
    ranks[1].send_signal(signal.SIGKILL)
    _attempt_running(slurm_daemon, job, 3, step=1)
    wait_for(lambda: slurm_daemon.status(job)["global_step"] >= 28, timeout=60, what="attempt 3 at step 28")
    # a third death: in_allocation_restarts (2) is spent, the allocation is given back for a new one (n2 back)
    assert slurm_cluster.run("scontrol", "update", "nodename=n2", "state=resume").returncode == 0
    ranks = wait_for(lambda: (r := _ranks(slurm_daemon, job)) and len(r) == 2 and r, what="both ranks")
    ranks[1].send_signal(signal.SIGKILL)
    final = slurm_daemon.wait_state(job, "completed", "failed", timeout=150)
    assert final["state"] == "completed" and final["global_step"] == 60
    first, second, third, fourth = final["attempts"]
    assert first["reason"] == second["reason"] == third["reason"] == "crash" and first["slurm_state"] == "FAILED"
    assert len({a["slurm_job_id"] for a in (first, second, third)}) == 1, final["attempts"]
    # step 0: the probe; a restart's health probe (2, 4) runs before its ranks' step
    assert [a["slurm_step_id"] for a in (first, second, third)] == ["1", "3", "5"]
    assert [a["nodes"] for a in (first, second, third)] == ["n[1-2]", "n[1-2]", "n[1,3]"]
    assert third["resumed_from"] == best_not_newest(final["job_dir"], 3)
    events = _events(slurm_daemon, job)
    launch3 = next(e for e in events if e["kind"] == "launch" and e["attempt"] == 3)
    # "draining" while the allocation still holds n2, "drained" once it is idle
    assert f"inside allocation {first['slurm_job_id']} on n1,n3 (n2 drain" in launch3["message"], launch3
    assert [(e["kind"], e["attempt"]) for e in events if e["kind"] in ("node_excluded", "spare_used")] == [
        ("node_excluded", 3), ("spare_used", 3)]
    assert fourth["slurm_job_id"] != first["slurm_job_id"] and fourth["slurm_step_id"] == "1"
    assert fourth["resumed_from"] == best_not_newest(final["job_dir"], 4)
    assert fourth["nodes"] == "n[1-2]"  # n2 was resumed: not excluded from the new allocation any more
    # each restart alert says where its attempt went: held by the restart, sent with its launch
    texts = [a["text"] for a in read_alerts(slurm_daemon.state_dir, job_id=job) if a["event"] == "restart"]
    assert len(texts) == 3, texts
    assert f"Restarted inside allocation {first['slurm_job_id']} on n1,n2." in texts[0], texts[0]
    assert f"Restarted inside allocation {first['slurm_job_id']} on n1,n3 (n2 drain" in texts[1], texts[1]
    assert f"Restarted in a new allocation {fourth['slurm_job_id']}." in texts[2], texts[2]
    wait_for(lambda: _squeue(slurm_cluster, job) == [], timeout=30, what="the allocation given back")


def test_a_node_that_fails_the_health_probe_is_left_out_and_a_spare_takes_its_place(
        slurm_daemon: DaemonProc, slurm_cluster: Cluster) -> None:
    job = _submit_with_a_spare(slurm_daemon, "probe", steps=40, step_time=0.05)
    st = _attempt_running(slurm_daemon, job, 1, step=8)
    # n2 cannot write in the next attempt's dir: a directory stands where its probe file goes (a real error)
    (JobLayout(Path(st["job_dir"])).attempt(2).dir / "health" / "n2").mkdir(parents=True)
    ranks = wait_for(lambda: (r := _ranks(slurm_daemon, job)) and len(r) == 2 and r, what="both ranks")
    ranks[1].send_signal(signal.SIGKILL)
    final = slurm_daemon.wait_state(job, "completed", "failed", timeout=120)
    assert final["state"] == "completed" and final["global_step"] == 40, final["attempts"]
    first, second, third = final["attempts"]
    assert first["nodes"] == "n[1-2]" and first["reason"] == "crash"
    # attempt 2's ranks never started: the probe ended its step, and said which node failed and why
    assert second["reason"] == "crash" and "n2: health probe failed: cannot write and read back" in \
        second["detail"], second
    assert len({a["slurm_job_id"] for a in final["attempts"]}) == 1  # all inside the one allocation
    assert third["nodes"] == "n[1,3]" and third["resumed_from"] == best_not_newest(final["job_dir"], 3)
    excluded = [e for e in _events(slurm_daemon, job) if e["kind"] in ("node_excluded", "spare_used")]
    assert [(e["kind"], e["attempt"], e["data"]["node"]) for e in excluded] == [
        ("node_excluded", 3, "n2"), ("spare_used", 3, "n3")], excluded
    assert excluded[0]["data"]["reason"].startswith("health probe failed: cannot write"), excluded[0]
    wait_for(lambda: _squeue(slurm_cluster, job) == [], timeout=30, what="the allocation given back")


def test_stop_cancels_the_slurm_job(slurm_daemon: DaemonProc, slurm_cluster: Cluster) -> None:
    cfg = write_config(slurm_daemon.workdir, "stop", supervision={"backend": "slurm"},
                       steps=2000, step_time=0.05, ckpt_every=10)
    job = slurm_daemon.submit(cfg)
    _attempt_running(slurm_daemon, job, 1, step=5)
    assert len(_squeue(slurm_cluster, job)) == 1
    slurm_daemon.ctl("stop", job)
    final = slurm_daemon.wait_state(job, "stopped", timeout=60)
    assert final["attempts"][0]["reason"] == "user_stop"
    wait_for(lambda: _squeue(slurm_cluster, job) == [], timeout=30, what="nothing of the job left in squeue")
    assert _ranks(slurm_daemon, job) == {}


def test_daemon_restart_adopts_the_slurm_job(slurm_daemon: DaemonProc, slurm_cluster: Cluster) -> None:
    # the fake cannot finish before the new daemon adopted its allocation, however slow the restart (the gate)
    gate = slurm_daemon.workdir / "adopt-may-finish"
    cfg = write_config(slurm_daemon.workdir, "adopt", supervision={"backend": "slurm"},
                       steps=120, step_time=0.05, ckpt_every=10, hold_until=str(gate))
    job = slurm_daemon.submit(cfg)
    first = _attempt_running(slurm_daemon, job, 1, step=3)["attempts"][0]
    slurm_daemon.kill(signal.SIGKILL)
    time.sleep(1.0)
    assert len(_squeue(slurm_cluster, job)) == 1  # the allocation runs on without its daemon
    slurm_daemon.start()
    wait_for(lambda: "adopted" in [e["kind"] for e in _events(slurm_daemon, job)], timeout=90,
             what="the new daemon to adopt the running allocation")
    gate.touch()
    final = slurm_daemon.wait_state(job, "completed", "failed", timeout=120)
    assert final["state"] == "completed" and len(final["attempts"]) == 1
    assert final["attempts"][0]["slurm_job_id"] == first["slurm_job_id"]
    assert "collected" not in [e["kind"] for e in _events(slurm_daemon, job)]


def test_daemon_restart_adopts_a_step_running_inside_the_allocation(slurm_daemon: DaemonProc,
                                                                     slurm_cluster: Cluster) -> None:
    gate = slurm_daemon.workdir / "step-may-finish"
    cfg = write_config(slurm_daemon.workdir, "adoptstep", supervision={"backend": "slurm"},
                       steps=80, step_time=0.05, ckpt_every=10, hold_until=str(gate))
    job = slurm_daemon.submit(cfg)
    _attempt_running(slurm_daemon, job, 1, step=12)
    wait_for(lambda: _ranks(slurm_daemon, job), what="the rank")[0].send_signal(signal.SIGKILL)
    second = _attempt_running(slurm_daemon, job, 2, step=1)["attempts"][1]
    slurm_daemon.kill(signal.SIGKILL)
    slurm_daemon.start()
    wait_for(lambda: [e for e in _events(slurm_daemon, job) if e["kind"] == "adopted" and e["attempt"] == 2],
             timeout=90, what="the new daemon to adopt the step")
    gate.touch()
    final = slurm_daemon.wait_state(job, "completed", "failed", timeout=120)
    assert final["state"] == "completed" and len(final["attempts"]) == 2, final["attempts"]
    assert final["attempts"][1]["slurm_job_id"] == second["slurm_job_id"] == final["attempts"][0]["slurm_job_id"]
    assert final["attempts"][1]["slurm_step_id"] == "3" and final["attempts"][1]["slurm_state"] == "COMPLETED"
    wait_for(lambda: _squeue(slurm_cluster, job) == [], timeout=30, what="the allocation given back")


def test_node_failure_comes_back_from_best_without_a_duplicate(slurm_daemon: DaemonProc,
                                                               slurm_cluster: Cluster) -> None:
    cfg = write_config(slurm_daemon.workdir, "node", supervision={"backend": "slurm"},
                       steps=60, step_time=0.1, ckpt_every=5)
    cfg.write_text(cfg.read_text() + "slurm:\n  nodes: 2\n  ntasks_per_node: 1\n")
    # Two usable nodes (n3 drained): the new allocation has to wait for n2. The node failure ends the
    # allocation, so the job goes on in a new one even though it may restart inside its allocation.
    assert slurm_cluster.run("scontrol", "update", "nodename=n3", "state=drain", "reason=test").returncode == 0
    job = slurm_daemon.submit(cfg)
    _attempt_running(slurm_daemon, job, 1, step=12)
    down = slurm_cluster.run("scontrol", "update", "nodename=n2", "state=down", "reason=test-node-failure")
    assert down.returncode == 0, down.stderr
    # attempt 1 ends with the node, attempt 2 waits in the queue: never two live allocations at once
    seen_two = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        live = _squeue(slurm_cluster, job)
        assert len(live) <= 1, live
        st = slurm_daemon.status(job)
        if len(st["attempts"]) == 2:
            seen_two = True
            if live and "PENDING" in live[0]:
                break
        time.sleep(0.3)
    assert seen_two, slurm_daemon.status(job)
    first = slurm_daemon.status(job)["attempts"][0]
    assert first["reason"] == "crash" and first["slurm_state"] == "NODE_FAIL", first
    assert "node" in first["detail"].lower()
    assert slurm_cluster.run("scontrol", "update", "nodename=n2", "state=resume").returncode == 0
    final = slurm_daemon.wait_state(job, "completed", "failed", timeout=150)
    assert final["state"] == "completed" and len(final["attempts"]) == 2
    assert final["attempts"][1]["resumed_from"] == best_not_newest(final["job_dir"], 2)
    assert final["attempts"][1]["nodes"] == "n[1-2]"
    assert final["attempts"][1]["slurm_job_id"] != final["attempts"][0]["slurm_job_id"]


def test_time_limit_checkpoints_first_and_continues_in_a_new_allocation(slurm_daemon: DaemonProc,
                                                                         slurm_cluster: Cluster) -> None:
    # Two minutes per allocation, SIGUSR1 30 s before it: the fake saves a "last" checkpoint on SIGUSR1.
    # Slurm sends it up to its 30 s PERIODIC_TIMEOUT early, so 60-90 s in: never at the step's start
    # (a one-minute allocation got it at once, sometimes before the fake had a handler to save with).
    cfg = write_config(slurm_daemon.workdir, "limit", supervision={"backend": "slurm"},
                       steps=3000, step_time=0.05, ckpt_every=100000)
    cfg.write_text(cfg.read_text() + 'slurm:\n  time: "00:02:00"\n  signal: "USR1@30"\n')
    job = slurm_daemon.submit(cfg)
    # A rank killed early: attempt 2 runs inside the same allocation, and meets its time limit there.
    _attempt_running(slurm_daemon, job, 1, step=5)
    wait_for(lambda: _ranks(slurm_daemon, job), what="the rank")[0].send_signal(signal.SIGKILL)
    final = slurm_daemon.wait_state(job, "completed", "failed", timeout=600)
    assert final["state"] == "completed"
    killed, *limited, last = final["attempts"]
    assert limited, last  # (on a loaded box a second allocation may reach its limit too)
    first = limited[0]
    assert killed["reason"] == "crash" and killed["slurm_state"] == "FAILED", killed
    assert first["slurm_job_id"] == killed["slurm_job_id"] and first["slurm_step_id"] == "3", first
    assert all(a["slurm_state"] == "TIMEOUT" and "time limit" in a["detail"] for a in limited), limited
    assert last["slurm_job_id"] != first["slurm_job_id"]  # the limit ended the allocation: a new one
    saves = [e for e in read_json_lines(JobLayout(Path(final["job_dir"])).manifest) if e.get("event") == "save"]
    usr1 = [e for e in saves if e["attempt"] == first["n"] and e["kind"] == "last"]
    assert usr1, saves  # the checkpoint SIGUSR1 asked for, before the limit
    assert last["reason"] == "completed" and last["global_step"] == 3000
    # no scheduled save, so no score: the unscored last.ckpt is both the best and the newest here
    manifest = JobLayout(Path(final["job_dir"])).manifest
    assert last["resumed_from"] is not None and last["resumed_from"] == resume_for(manifest, last["n"])


def test_a_state_dir_the_daemon_does_not_share_with_the_nodes_fails_the_job(slurm_daemon: DaemonProc,
                                                                           slurm_cluster: Cluster,
                                                                           tmp_path: Path) -> None:
    # The nodes write their probe files where this daemon does not look (as if the state dir were node-local):
    # the batch node is satisfied, the daemon is not, and says so instead of restarting forever.
    slurm_daemon.kill(signal.SIGTERM)
    slurm_daemon.start(ML_SUPERVISOR_SLURM_PROBE_WAIT="5")
    elsewhere = tmp_path / "node-local"
    cfg = write_config(slurm_daemon.workdir, "unshared", supervision={"backend": "slurm"},
                       steps=2000, step_time=0.05, ckpt_every=10)
    cfg.write_text(cfg.read_text() + f"slurm:\n  setup: ['PROBE_DIR={elsewhere}']\n")
    job = slurm_daemon.submit(cfg)
    final = slurm_daemon.wait_state(job, "completed", "failed", timeout=90)
    assert (final["state"], final["end_reason"]) == ("failed", "config_error")
    (attempt,) = final["attempts"]
    assert attempt["reason"] == "config_error"
    assert "not on a filesystem this daemon shares with the Slurm nodes: it sees 0 of 1" in attempt["detail"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["n1"]  # the node did write its probe
    wait_for(lambda: _squeue(slurm_cluster, job) == [], timeout=30, what="the allocation cancelled")


def test_a_slurm_section_that_contradicts_the_trainer_is_refused_at_submit(slurm_daemon: DaemonProc) -> None:
    cfg = write_config(slurm_daemon.workdir, "bad", supervision={"backend": "slurm"})
    cfg.write_text(cfg.read_text() + "trainer:\n  devices: 2\nslurm:\n  ntasks_per_node: 1\n")
    done = slurm_daemon.ctl("submit", str(cfg), check=False)
    assert done.returncode != 0
    assert f"{cfg}: slurm.ntasks_per_node: is 1 but trainer.devices is 2" in done.stderr
    assert "Traceback" not in done.stderr
    assert slurm_daemon.client().call("list") == []


def _events(d: DaemonProc, job: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in d.ctl("events", job, "--json").stdout.splitlines() if line.strip()]
