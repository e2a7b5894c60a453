"""Goodput of a 2-GPU DDP job that loses a GPU for a while: elastic (go on with 1) against waiting for it.

A real daemon with the simulated NVML (2 GPUs: the one simulation the project accepts; it only
steers placement) runs the digits example as 2 gloo ranks on the CPU, each batch sleeping
``--step-delay`` s (the stand-in for a GPU's compute, so 1 rank accumulating 2 batches takes
twice as long a step as 2 ranks, as on GPUs). Once attempt 1 has trained and saved, Xid 79 on
GPU 1 (quarantined); ``--loss`` seconds later the quarantine is cleared (``supervisorctl gpus
clear 1``); the job runs to ``--steps`` optimizer steps of 64 samples each. Side by side:

    wait      the job as today: it waits queued until GPU 1 is back, then resumes on 2
    elastic   ``supervision.elastic.min_devices: 1``: 1 rank accumulating 2 batches meanwhile,
              grown back to 2 (a checkpoint, a planned restart) once GPU 1 is back

Per mode: optimizer steps gained over the loss window (what the job keeps when GPU 1 is cleared: the
running attempt's step, or a waiting job's newest checkpoint; minus the step at the fault: work rolled
back to a checkpoint counts as lost), that window's goodput (samples per second), and the time from
the fault to completion.

    .venv/bin/python bench/elastic.py [--loss 60] [--steps 800] [--step-delay 0.1] [--only wait|elastic]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import live_checkpoints
from tests.support.harness import REPO, DaemonProc, real_env, wait_for

GLOBAL_BATCH = 64
MODES = ("wait", "elastic")
WAIT_S = 600


def _overrides(mode: str, steps: int, delay: float) -> list[str]:
    over = ["model.class_path=trainer.examples.faulty.FaultyDigitsClassifier", f"+model.init_args.step_delay={delay}",
            "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=auto", "supervision.gpus=2",
            "data.init_args.batch_size=32", "logger.wandb.mode=disabled", "checkpoint.monitor=null",
            "checkpoint.every_n_train_steps=20", "supervision.standby=off", f"trainer.max_steps={steps}",
            "trainer.max_epochs=1000", "trainer.limit_val_batches=0"]
    return over + (["supervision.elastic.min_devices=1"] if mode == "elastic" else [])


def _gpu(index: int) -> dict[str, Any]:
    return {"index": index, "uuid": f"GPU-fake-{index}", "name": "Fake H100", "memory_total_mib": 81559,
            "memory_used_mib": 0, "temperature_c": 40, "ecc_uncorrected": 0, "retired_pages_pending": False,
            "lost": False, "xid": []}


def _set_xid(nvml: Path, xid: list[int]) -> None:
    data = json.loads(nvml.read_text())
    data["gpus"][1]["xid"] = xid
    nvml.write_text(json.dumps(data))


def run(mode: str, *, loss: float, steps: int, delay: float) -> dict[str, float]:
    """One fresh daemon and job in ``mode``; the figures of its loss window and its end."""
    with tempfile.TemporaryDirectory(prefix=f"elastic-bench-{mode}-") as tmp:
        nvml = Path(tmp) / "nvml.json"
        nvml.write_text(json.dumps({"gpus": [_gpu(0), _gpu(1)]}))
        state = Path(tmp) / "state"
        d = DaemonProc(state, REPO, real_env(state, OMP_NUM_THREADS="1", ML_SUPERVISOR_NVML=f"fake:{nvml}"))
        d.start("hang.min_timeout=4", "hang.startup_allowance=300", "gpu.poll_interval=0.2")
        try:
            job = d.submit(REPO / "configs" / "digits.yaml", *_overrides(mode, steps, delay))
            manifest = JobLayout(Path(d.status(job)["job_dir"])).manifest
            wait_for(lambda: any(e.get("event") == "save" for e in read_json_lines(manifest))
                     and d.status(job)["global_step"] >= 25, timeout=WAIT_S, interval=0.1, what="attempt 1 trained")
            at_fault = int(d.status(job)["global_step"])
            fault = time.monotonic()
            _set_xid(nvml, [79])
            time.sleep(loss)
            status = d.status(job)
            # what the job keeps of the window: a running attempt's step (the grow saves it first), else the
            # step it will resume from (a waiting job's newest checkpoint: what attempt 1 did after it is lost)
            at_clear = (int(status["global_step"]) if status["state"] == "running"
                        else max((e.step for e in live_checkpoints(manifest, require_file=False)), default=0))
            _set_xid(nvml, [])
            d.ctl("gpus", "clear", "1")
            final = d.wait_state(job, "completed", "failed", timeout=WAIT_S)
            done = time.monotonic()
            assert final["state"] == "completed", final["detail"]
            gained = at_clear - at_fault
            return {"gained_steps": gained, "window_samples_s": gained * GLOBAL_BATCH / loss,
                    "fault_to_end_s": done - fault, "attempts": len(final["attempts"]),
                    "resizes": sum(1 for a in final["attempts"] if a["reason"] == "resize")}
        finally:
            if d.proc is not None:
                d.kill()
            d.kill_leftovers()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", type=float, default=60.0, help="seconds GPU 1 stays quarantined")
    parser.add_argument("--steps", type=int, default=800, help="the job's max_steps")
    parser.add_argument("--step-delay", type=float, default=0.1, help="seconds each batch sleeps (its 'compute')")
    parser.add_argument("--only", choices=MODES)
    args = parser.parse_args()
    rows = {m: run(m, loss=args.loss, steps=args.steps, delay=args.step_delay) for m in MODES
            if args.only in (None, m)}
    print(f"GPU 1 lost for {args.loss:.0f} s; {args.steps} steps of {GLOBAL_BATCH} samples; "
          f"{args.step_delay} s a batch")
    print(f"{'mode':8} {'steps gained in the loss':>25} {'samples/s then':>15} {'fault -> done (s)':>18} "
          f"{'attempts':>9} {'resizes':>8}")
    for mode, r in rows.items():
        print(f"{mode:8} {r['gained_steps']:>25.0f} {r['window_samples_s']:>15.1f} {r['fault_to_end_s']:>18.1f} "
              f"{r['attempts']:>9.0f} {r['resizes']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
