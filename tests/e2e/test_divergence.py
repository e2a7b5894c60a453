"""Real Lightning under the real daemon: a loss that turns NaN is rolled back, or the job gives up cleanly.

The digits example returns a NaN loss at a chosen step (``nan_at_step``): once (the
rollback then trains on to the end) or on every attempt (the job ends ``failed`` /
``diverged`` after ``max_rollbacks``). Attempts start cold (no standby): these tests
are about what each attempt resumes from and does, not how fast it starts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.layout import JobLayout
from tests.support.harness import REPO, DaemonProc

pytestmark = [pytest.mark.e2e, pytest.mark.lightning]

DIGITS = REPO / "configs" / "digits.yaml"
FAULTY = "trainer.examples.faulty.FaultyDigitsClassifier"
# 23 steps an epoch; a checkpoint every 10 steps; the guard's spike check stays on (its default), never tripped
BASE = ["trainer.max_epochs=4", "checkpoint.every_n_train_steps=10", "logger.wandb.mode=disabled",
        "supervision.standby=off", f"model.class_path={FAULTY}"]


def _manifest_steps(job_dir: Path, attempt: int) -> list[int]:
    return [e["step"] for e in read_json_lines(JobLayout(job_dir).manifest)
            if e.get("event") == "save" and e.get("attempt") == attempt]


def test_a_nan_once_is_rolled_back_to_before_it_with_batches_skipped_and_rates_scaled(real_daemon: DaemonProc) -> None:
    d = real_daemon
    job = d.submit(DIGITS, *BASE, "model.init_args.nan_at_step=45", "model.init_args.record_batches=true",
                   "supervision.divergence.skip_batches=3", "supervision.divergence.lr_scale=0.5")
    final = d.wait_state(job, "completed", "failed", timeout=300)
    assert final["state"] == "completed" and final["end_reason"] == "finished", final["detail"]
    first, second = final["attempts"]
    assert first["reason"] == "diverged" and "diverged at step 45: non-finite loss (nan)" in first["detail"]
    job_dir = Path(final["job_dir"])
    # attempt 1 saved nothing after the bad step, and marked whatever it saved at it unusable
    assert max(_manifest_steps(job_dir, 1)) <= 45
    marks = [e for e in read_json_lines(JobLayout(job_dir).manifest) if e.get("event") == "unusable"]
    assert [(m["from_step"], m["attempt"]) for m in marks] == [(45, 1)]
    # the step of the file attempt 2 resumed from, as attempt 1 left it (last.ckpt is saved over and over)
    resumed_step = [e["step"] for e in read_json_lines(JobLayout(job_dir).manifest)
                    if e.get("event") == "save" and e["attempt"] == 1 and e["path"] == second["resumed_from"]][-1]
    assert resumed_step < 45
    # whatever resume_from says (best): the newest finite checkpoint before the bad step
    assert resumed_step == max(s for s in _manifest_steps(job_dir, 1) if s < 45)
    attempt2 = JobLayout(job_dir).attempt(2).dir
    rollback = json.loads((attempt2 / "rollback.json").read_text())
    # Lightning resumes mid-epoch at the batch after the checkpoint's (23 batches an epoch): the next 3 are dropped
    first = resumed_step % 23
    assert rollback["skipped"] == [first, first + 1, first + 2] and rollback["lr_scale"] == 0.5
    assert rollback["lrs"] and all(math.isclose(lr, 0.003 * 0.5) for lr in rollback["lrs"])  # Adam, lr 0.003
    trained = [json.loads(line) for line in (attempt2 / "batches.jsonl").read_text().splitlines()]
    assert trained[0]["batch_idx"] == first + 3, "the three batches after the checkpoint were not skipped"
    assert final["global_step"] >= 4 * 23 - 3 and all(math.isfinite(v) for v in final["metrics"].values())
    assert final["divergence"]["rollbacks"] == 1 and final["divergence"]["first_bad_steps"] == [45]
    assert final["divergence"]["rollback_attempts"][0]["skipped_batches"] == rollback["skipped"]
    events = [e["message"] for e in d.client().call("events", job=job)]
    assert any("after the divergence at step 45, skipping 3 batches, learning rates x0.5" in m for m in events)


def test_a_nan_every_time_ends_the_job_failed_with_a_finite_best_checkpoint(real_daemon: DaemonProc) -> None:
    d = real_daemon
    job = d.submit(DIGITS, *BASE, "model.init_args.nan_at_step=30", "model.init_args.fault_on_attempt=null",
                   "supervision.divergence.max_rollbacks=1", "supervision.budget=1h")
    final = d.wait_state(job, "completed", "failed", timeout=300)
    assert final["state"] == "failed" and final["end_reason"] == "diverged"
    assert [a["reason"] for a in final["attempts"]] == ["diverged", "diverged"]
    assert "2 times (at steps 30, 30)" in final["detail"] and "max_rollbacks=1" in final["detail"]
    best = final["best_checkpoint"]
    assert best is not None and best["step"] < 30 and math.isfinite(best["score"])
    assert Path(final["job_dir"], "best.ckpt").resolve() == Path(best["path"]).resolve()
    assert final["budget"]["used"] < 0.1 * 3600  # gave up instead of burning the hour
