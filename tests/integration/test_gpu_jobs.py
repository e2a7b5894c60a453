"""GPU placement and faults end to end: a real daemon, the fake trainer, and the simulated NVML
(the one simulation the project accepts, behind the same interface as real NVML)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.monitorfiles import read_monitor_start
from tests.support.harness import DaemonProc, fake_env, wait_for, write_config
from tests.support.resume_oracle import best_not_newest

pytestmark = pytest.mark.e2e


def _gpu(index: int, **extra: Any) -> dict[str, Any]:
    return {"index": index, "uuid": f"GPU-fake-{index}", "name": "Fake H100", "memory_total_mib": 81559,
            "memory_used_mib": 0, "temperature_c": 40, "ecc_uncorrected": 0, "retired_pages_pending": False,
            "lost": False, "xid": [], **extra}


@pytest.fixture
def gpu_daemon(tmp_path: Path) -> Any:
    nvml = tmp_path / "nvml.json"
    nvml.write_text(json.dumps({"gpus": [_gpu(0), _gpu(1)]}))
    state = tmp_path / "state"
    work = tmp_path / "work"
    work.mkdir()
    d = DaemonProc(state, work, fake_env(state, ML_SUPERVISOR_NVML=f"fake:{nvml}"))
    d.start("gpu.poll_interval=0.2")
    d.nvml = nvml  # type: ignore[attr-defined]
    yield d
    if d.proc is not None:
        d.kill()
    d.kill_leftovers()


def _set_gpu(nvml: Path, index: int, **fields: Any) -> None:
    data = json.loads(nvml.read_text())
    data["gpus"][index].update(fields)
    nvml.write_text(json.dumps(data))


def test_xid_79_stops_the_attempt_quarantines_the_gpu_and_relaunches_elsewhere(gpu_daemon: DaemonProc) -> None:
    d = gpu_daemon
    cfg = write_config(d.workdir, steps=60, step_time=0.05, ckpt_every=5, supervision={"gpus": 1})
    job = d.submit(cfg)
    wait_for(lambda: d.status(job)["global_step"] >= 8, what="progress on gpu 0")
    assert d.status(job)["attempts"][0]["gpus"] == [0]
    _set_gpu(d.nvml, 0, xid=[79])  # type: ignore[attr-defined]
    final = d.wait_state(job, "completed", "failed", timeout=60)
    first, second = final["attempts"][:2]
    assert first["reason"] == "gpu_fault" and "79" in first["detail"] and "gpu 0" in first["detail"]
    assert second["gpus"] == [1] and second["resumed_from"] == best_not_newest(final["job_dir"], 2)
    logs = d.ctl("logs", job, "--attempt", "2").stdout
    assert "CUDA_VISIBLE_DEVICES=1" in logs
    gpus = json.loads(d.ctl("gpus", "--json").stdout)
    assert gpus[0]["health"] == "quarantined" and gpus[1]["health"] == "healthy"
    assert any("79" in r for r in gpus[0]["reasons"])
    assert "quarantine cleared" in d.ctl("gpus", "clear", "0").stdout
    assert json.loads(d.ctl("gpus", "--json").stdout)[0]["health"] == "healthy"


def test_a_job_waits_queued_for_busy_gpus_and_oversized_jobs_are_refused(gpu_daemon: DaemonProc) -> None:
    d = gpu_daemon
    big = write_config(d.workdir, "big", supervision={"gpus": 3})
    refused = d.ctl("submit", str(big), check=False)
    assert refused.returncode == 7
    assert "supervision.gpus: the job asks for 3 GPUs; this node has 2 GPUs" in refused.stderr
    # The first job runs until stopped: on a loaded machine a short one could end before the second is submitted.
    first = d.submit(write_config(d.workdir, "first", steps=10**6, step_time=0.05, supervision={"gpus": 2}))
    wait_for(lambda: d.status(first)["state"] == "running", what="first job running")
    second = d.submit(write_config(d.workdir, "second", steps=5, step_time=0.01, supervision={"gpus": 1}))
    waiting = wait_for(lambda: (s := d.status(second))["wait_reason"] and s, what="second job to wait")
    assert waiting["state"] == "queued" and "waiting for 1 free healthy GPU" in waiting["wait_reason"]
    assert d.status(first)["state"] == "running"
    d.ctl("stop", first)
    d.wait_state(first, "stopped")
    assert d.wait_state(second, "completed")["attempts"][0]["gpus"] in ([0], [1])


def test_a_foreign_process_on_the_gpu_delays_the_launch(gpu_daemon: DaemonProc) -> None:
    d = gpu_daemon
    foreign = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        _set_gpu(d.nvml, 0, processes=[{"pid": foreign.pid, "used_mib": 2048}])  # type: ignore[attr-defined]
        _set_gpu(d.nvml, 1, processes=[{"pid": foreign.pid, "used_mib": 2048}])  # type: ignore[attr-defined]
        job = d.submit(write_config(d.workdir, steps=5, step_time=0.01, supervision={"gpus": 1}))
        waiting = wait_for(lambda: (s := d.status(job))["wait_reason"] and s, what="the job to wait")
        assert waiting["state"] == "queued"
        assert str(foreign.pid) in waiting["wait_reason"] and "2048" in waiting["wait_reason"]
        assert foreign.poll() is None, "a foreign process must never be killed"
    finally:
        foreign.kill()
        foreign.wait()
    d.wait_state(job, "completed")


def test_no_nvml_means_one_log_line_and_cpu_jobs_as_usual(daemon: DaemonProc) -> None:
    assert "no GPUs" in daemon.ctl("gpus").stdout
    assert json.loads(daemon.ctl("gpus", "--json").stdout) == []
    job = daemon.submit(write_config(daemon.workdir, steps=5, step_time=0.01))
    final = daemon.wait_state(job, "completed")
    assert final["attempts"][0]["gpus"] == []
    assert "CUDA_VISIBLE_DEVICES=\n" in daemon.ctl("logs", job).stdout
    assert daemon.log.read_text().count("GPU features off") == 1


def test_a_degrading_gpu_gets_the_trainer_to_checkpoint_and_go_on(gpu_daemon: DaemonProc) -> None:
    d = gpu_daemon
    job = d.submit(write_config(d.workdir, steps=150, step_time=0.05, ckpt_every=1000, supervision={"gpus": 1}))
    wait_for(lambda: d.status(job)["global_step"] >= 5, what="progress")
    _set_gpu(d.nvml, 0, temperature_c=91)  # type: ignore[attr-defined]  # above the 85 C default: degraded
    requested = wait_for(lambda: [e for e in d.client().call("events", job=job)
                                  if e["kind"] == "checkpoint_requested"], what="a checkpoint request")
    assert "gpu 0" in requested[0]["message"]
    saved = wait_for(lambda: [e for e in d.client().call("events", job=job) if e["kind"] == "checkpoint"],
                     what="the requested checkpoint")
    assert saved[0]["data"]["kind"] == "last"
    final = d.wait_state(job, "completed", timeout=60)
    assert len(final["attempts"]) == 1  # degraded is not failed: the attempt went on


def test_a_gpu_fault_stops_every_rank_of_a_ddp_job_relaunches_them_on_healthy_gpus_or_waits(tmp_path: Path) -> None:
    """A 2-rank job (one fake-trainer process per rank, started by the monitor) on a 3-GPU node."""
    nvml = tmp_path / "nvml.json"
    nvml.write_text(json.dumps({"gpus": [_gpu(0), _gpu(1), _gpu(2)]}))
    state, work = tmp_path / "state", tmp_path / "work"
    work.mkdir()
    d = DaemonProc(state, work, fake_env(state, ML_SUPERVISOR_NVML=f"fake:{nvml}"))
    d.start("gpu.poll_interval=0.2")
    try:
        cfg = write_config(work, "ddp", steps=400, step_time=0.05, ckpt_every=5)
        text = cfg.read_text() + "trainer: {accelerator: gpu, devices: 2, strategy: ddp}\n"
        cfg.write_text(text)  # supervision.gpus left unset: it takes trainer.devices
        job = d.submit(cfg)
        status = wait_for(lambda: (s := d.status(job))["global_step"] >= 8 and s, what="progress on 2 GPUs")
        assert (status["gpus_requested"], status["world_size"], status["attempts"][0]["gpus"]) == (2, 2, [0, 1])
        jl = JobLayout(Path(status["job_dir"]))
        first = read_monitor_start(jl.attempt(1).monitor_start)
        assert first is not None and sorted(first.pids()) == [0, 1]

        _set_gpu(nvml, 1, xid=[79])  # a fault on the job's second GPU stops both ranks
        wait_for(lambda: len(d.status(job)["attempts"]) >= 2 and d.status(job)["global_step"] > 0,
                 timeout=60, what="attempt 2 running")
        status = d.status(job)
        assert status["attempts"][0]["reason"] == "gpu_fault" and status["attempts"][1]["gpus"] == [0, 2]
        second = wait_for(lambda: read_monitor_start(jl.attempt(2).monitor_start), what="attempt 2's ranks")
        assert sorted(second.pids()) == [0, 1]
        assert not [p for p in first.pids().values() if psutil.pid_exists(p)
                    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        rank1_out = jl.attempt(2).stdout_of(1)
        wait_for(lambda: "CUDA_VISIBLE_DEVICES=0,2" in rank1_out.read_text(), what="rank 1 on GPUs 0,2")

        _set_gpu(nvml, 2, xid=[79])  # one healthy GPU left: the job waits for two
        waiting = wait_for(lambda: (s := d.status(job))["wait_reason"] and s, timeout=60, what="the job to wait")
        assert waiting["state"] == "queued" and "waiting for 2 free healthy GPUs" in waiting["wait_reason"]
        assert waiting["attempts"][1]["reason"] == "gpu_fault"
        d.ctl("stop", job)
    finally:
        d.kill()
        d.kill_leftovers()
