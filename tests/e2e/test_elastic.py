"""Elastic DDP under the real daemon: the digits example, 2 gloo ranks on CPU placed on 2 simulated GPUs
(the simulated NVML only steers allocation: ``trainer.accelerator: auto`` finds no CUDA and trains on the CPU).

Xid 79 on GPU 1 -> attempt 2 runs 1 rank accumulating 2 batches on GPU 0; ``supervisorctl gpus clear 1`` ->
attempt 3 runs 2 ranks again (a planned ``resize`` restart, not a crash); the job completes at its target
step, and every rank's count of samples per optimizer step says the global batch stayed 64 throughout.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout, per_rank_name
from tests.support.harness import REPO, DaemonProc, real_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.lightning]

DIGITS = REPO / "configs" / "digits.yaml"
TARGET = 60
# 2 ranks x 32 = the example's global batch of 64; a step sleeps 0.05 s a batch, so no attempt ends the job early
ELASTIC = ["model.class_path=trainer.examples.faulty.FaultyDigitsClassifier", "+model.init_args.step_delay=0.05",
           "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=auto", "supervision.gpus=2",
           "supervision.elastic.min_devices=1", "data.init_args.batch_size=32", "logger.wandb.mode=disabled",
           "checkpoint.monitor=null", "checkpoint.every_n_train_steps=5", "supervision.standby=off",
           f"trainer.max_steps={TARGET}", "trainer.max_epochs=100", "trainer.limit_val_batches=0"]
START_TIMEOUT = 120.0


def _gpu(index: int) -> dict[str, Any]:
    return {"index": index, "uuid": f"GPU-fake-{index}", "name": "Fake H100", "memory_total_mib": 81559,
            "memory_used_mib": 0, "temperature_c": 40, "ecc_uncorrected": 0, "retired_pages_pending": False,
            "lost": False, "xid": []}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    nvml = tmp_path / "nvml.json"
    nvml.write_text(json.dumps({"gpus": [_gpu(0), _gpu(1)]}))
    state = tmp_path / "state"
    d = DaemonProc(state, REPO, real_env(state, OMP_NUM_THREADS="1", ML_SUPERVISOR_NVML=f"fake:{nvml}"))
    d.start("hang.min_timeout=4", "hang.startup_allowance=120", "gpu.poll_interval=0.2")
    d.nvml = nvml  # type: ignore[attr-defined]
    yield d
    if d.proc is not None:
        d.kill()
    d.kill_leftovers()


def _set_xid(nvml: Path, index: int, xid: list[int]) -> None:
    data = json.loads(nvml.read_text())
    data["gpus"][index]["xid"] = xid
    nvml.write_text(json.dumps(data))


def _past(d: DaemonProc, job: str, n: int, step: int) -> None:
    """Attempt ``n`` runs, saved a checkpoint, and its rank 0 is past ``step``."""
    def past() -> bool:
        status = d.status(job)
        if len(status["attempts"]) < n:
            return False
        jl = JobLayout(Path(status["job_dir"]))
        saved = any(e.get("event") == "save" and e.get("attempt") == n for e in read_json_lines(jl.manifest))
        beat = read_heartbeat(jl.attempt(n).heartbeat)
        return saved and beat is not None and beat.step >= step

    wait_for(past, timeout=START_TIMEOUT, interval=0.1, what=f"attempt {n} past step {step} with a checkpoint")


# An epoch's last step is short: 1438 training samples are 22 x 32 + 15 a rank at 2 ranks, 44 x 32 + 30 at 1
EPOCH_ENDS = {2: 15, 1: 30}


def _epochs_ended(job_dir: str, n: int) -> int:
    """Epochs that ended during attempt ``n`` (its last heartbeat's epoch against the previous attempt's)."""
    jl = JobLayout(Path(job_dir))

    def epoch(k: int) -> int:
        beat = read_heartbeat(jl.attempt(k).heartbeat) if k >= 1 else None
        return beat.epoch if beat is not None else 0

    return epoch(n) - epoch(n - 1)


def _global_batch(job_dir: str, n: int, world_size: int) -> int:
    """Samples per optimizer step over every rank of attempt ``n`` (each rank's full step, summed).

    Every step of every rank is a full one but an epoch's last: also the first after a resume, whose
    position in the epoch the trainer rescaled to whole steps of the new size (``ElasticResume``). An epoch's
    last step is one batch at 1 rank (45 batches): the partial one, or a full one when the epoch was resumed
    mid-way (the loader is not resumable: its data starts over, and the epoch ends by Lightning's count).
    """
    total = 0
    for rank in range(world_size):
        record = json.loads((JobLayout(Path(job_dir)).attempt(n).dir / per_rank_name("samples.json", rank))
                            .read_text())
        assert (record["world_size"], record["rank"]) == (world_size, rank)
        counts = Counter({int(k): v for k, v in record["samples_per_step"].items()})
        (samples, steps), = counts.most_common(1)
        # a full batch alone only as the last step of an epoch this attempt resumed mid-way and ended
        one_batch = {samples // record["accumulate_grad_batches"]} if _epochs_ended(job_dir, n) else set()
        short = sum(v for k, v in counts.items() if k != samples)
        assert steps >= 3 and set(counts) <= {samples, EPOCH_ENDS[world_size]} | one_batch, counts
        assert short <= 2, f"{short} short steps: only an epoch's last may be short ({counts})"
        total += samples
    return total


def test_lose_gpu_1_shrink_to_one_rank_accumulating_two_then_grow_back(daemon: DaemonProc) -> None:
    d = daemon
    nvml: Path = d.nvml  # type: ignore[attr-defined]
    job = d.submit(DIGITS, *ELASTIC)
    _past(d, job, 1, 5)
    _set_xid(nvml, 1, [79])
    _past(d, job, 2, 12)
    second = d.status(job)["attempts"][1]
    assert (second["world_size"], second["accumulate_grad_batches"], second["gpus"]) == (1, 2, [0])
    assert d.status(job)["world_size"] == 1  # the size it runs at now
    _set_xid(nvml, 1, [])
    assert "quarantine cleared" in d.ctl("gpus", "clear", "1").stdout
    final = d.wait_state(job, "completed", "failed", timeout=START_TIMEOUT)
    assert final["state"] == "completed", final["detail"]
    first, second, third = final["attempts"]
    assert (first["reason"], second["reason"], third["reason"]) == ("gpu_fault", "resize", "completed")
    assert (first["world_size"], first["accumulate_grad_batches"]) == (2, 1)
    assert (third["world_size"], third["accumulate_grad_batches"], third["gpus"]) == (2, 1, [0, 1])
    assert second["resumed_from"] and third["resumed_from"]  # each resize resumed from a checkpoint
    assert final["global_step"] == TARGET and final["world_size"] == 2
    events = d.client().call("events", after=0, job=job)
    resizes = [e["message"] for e in events if e["kind"] == "resize"]
    assert resizes == ["GPU 1 lost: continuing on 1 of 2 GPUs, accumulating 2 batches",
                       "GPUs returned: back to its configured size, 2 of 2 GPUs, accumulating 1 batch"]
    # the global batch the trainer really trained with, on each side of both resizes
    assert [_global_batch(final["job_dir"], n, size) for n, size in ((1, 2), (2, 1), (3, 2))] == [64, 64, 64]
