"""The pure side of divergence handling: the detector, the rollback choice, the manifest marker, the policy."""

from __future__ import annotations

import math
import random

from supervisor.jobfiles.exitrecord import ExitRecord
from supervisor.jobfiles.manifest import CheckpointEntry, live_in
from supervisor.jobfiles.monitorfiles import MonitorExit, RankEnding
from supervisor.rules.causes import Cause, EndReason
from supervisor.rules.outcome import classify_end
from supervisor.rules.policy import AttemptEnd, PastAttempt, RestartPolicy, decide
from supervisor.rules.rank_outcome import classify_ranks_end
from supervisor.rules.rollback import choose_rollback, next_resume, rollback_after
from supervisor.rules.states import JobState
from trainer.divergence import LOSS_SPIKE, NON_FINITE_LOSS, SpikeDetector

T0 = 1_800_000_000.0
POLICY = RestartPolicy(max_restarts=1, restart_window=3600.0, backoff_initial=10.0, backoff_factor=2.0,
                       backoff_max=300.0, no_progress_attempts=3, budget=None, max_rollbacks=2)


def detector(**kw: float) -> SpikeDetector:
    args = {"spike_factor": 10.0, "patience": 3, "window": 50, "warmup_steps": 20, **kw}
    return SpikeDetector(spike_factor=args["spike_factor"], patience=int(args["patience"]),
                         window=int(args["window"]), warmup_steps=int(args["warmup_steps"]))


def first_verdict(det: SpikeDetector, losses: list[float]):  # type: ignore[no-untyped-def]
    for step, loss in enumerate(losses):
        verdict = det.update(step, loss)
        if verdict is not None:
            return verdict
    return None


def healthy_curve(rng: random.Random, n: int = 2000) -> list[float]:
    """A falling loss with heavy per-batch noise (x0.3 to x3 of the trend) and an occasional single bad batch."""
    losses = []
    for step in range(n):
        trend = 2.5 * math.exp(-step / 400) + 0.05
        noise = math.exp(rng.gauss(0.0, 0.45))
        losses.append(trend * noise * (8.0 if rng.random() < 0.01 else 1.0))
    return losses


def test_a_noisy_healthy_curve_never_trips_the_spike_check() -> None:
    for seed in range(20):
        assert first_verdict(detector(), healthy_curve(random.Random(seed))) is None, seed


def test_a_sustained_spike_is_caught_at_its_first_step() -> None:
    losses = healthy_curve(random.Random(1), 600)
    losses[400:410] = [50.0] * 10
    verdict = first_verdict(detector(), losses)
    assert verdict is not None and verdict.check == LOSS_SPIKE
    assert verdict.step == 400 and verdict.value == 50.0 and verdict.baseline is not None


def test_a_spike_shorter_than_the_patience_is_forgiven() -> None:
    losses = healthy_curve(random.Random(2), 600)
    losses[400:402] = [50.0, 50.0]  # patience 3: two steps are a bad pair of batches, not a divergence
    assert first_verdict(detector(), losses) is None


def test_a_non_finite_loss_diverges_at_once_even_in_warmup_and_with_spikes_off() -> None:
    for loss in (math.nan, math.inf, -math.inf):
        verdict = first_verdict(detector(spike_factor=None), [1.0, 0.9, loss, 0.8])
        assert verdict is not None and verdict.check == NON_FINITE_LOSS and verdict.step == 2


def test_spikes_are_not_judged_during_warmup() -> None:
    losses = [1.0] * 10 + [100.0] * 10 + [1.0] * 10
    assert first_verdict(detector(warmup_steps=25), losses) is None


def entry(step: int, *, finite: bool = True, score: float | None = None) -> CheckpointEntry:
    return CheckpointEntry(path=f"/c/step={step}.ckpt", step=step, epoch=0, monitor="val_loss",
                           score=score if score is not None else 1.0 / (step + 1), mode="min", size=0,
                           time=T0 + step, attempt=1, kind="topk", finite=finite)


def accept(entry: CheckpointEntry) -> str | None:
    return None


def test_the_rollback_takes_the_newest_finite_checkpoint_strictly_before_the_bad_step() -> None:
    entries = [entry(40), entry(80, score=0.01), entry(100, finite=False), entry(120), entry(160, score=0.001)]
    choice = choose_rollback(entries, before_step=120, verify=accept)
    assert choice.path == "/c/step=80.ckpt" and choice.rule == "rollback: newest before step 120"
    assert choice.skipped == (("/c/step=100.ckpt", "non-finite metrics"),)
    # resume_from: best would have taken step 160 (the best score), which may hold the bad weights
    assert next_resume(entries, "best", None, verify=accept).path == "/c/step=160.ckpt"
    rollback = rollback_after(120, {"rollback_margin_steps": 50, "skip_batches": 4, "lr_scale": 0.5})
    assert rollback is not None and rollback.before_step == 70
    assert next_resume(entries, "best", rollback, verify=accept).path == "/c/step=40.ckpt"
    assert rollback.trainer_args() == ["--skip-batches", "4", "--lr-scale", "0.5"]


def test_with_nothing_before_the_bad_step_the_rollback_starts_from_scratch() -> None:
    choice = choose_rollback([entry(120), entry(130)], before_step=100, verify=accept)
    assert choice.path is None and choice.rule.startswith("scratch")


def test_the_unusable_marker_drops_the_saves_at_or_after_the_bad_step_and_keeps_later_timelines() -> None:
    events = [e.to_event() for e in (entry(40), entry(80), entry(120))]
    events.append({"event": "unusable", "from_step": 80, "why": "diverged", "attempt": 1})
    assert [e.step for e in live_in(events)] == [40]
    events.append(entry(90).to_event())  # the rolled-back timeline saves past the old bad step again
    assert [e.step for e in live_in(events)] == [40, 90]


def test_a_diverged_exit_record_is_the_divergence_whatever_the_daemon_meant() -> None:
    record = ExitRecord(status="diverged", time=T0, pid=1, message="diverged at step 50: non-finite loss (nan)",
                        divergence={"step": 50, "check": "non_finite_loss", "value": "nan"})
    outcome = classify_end(record, MonitorExit(exit_code=3, signal=None, ended_at=T0, trainer_pid=1), Cause.HANG)
    assert outcome.cause is Cause.DIVERGED and outcome.diverged_at == 50 and "step 50" in outcome.detail


def test_with_several_ranks_the_rank_that_diverged_names_the_cause() -> None:
    other = ExitRecord(status="diverged", time=T0, pid=1, rank=0, message="diverged at step 7: another rank's",
                       divergence={"step": 7, "check": "rank", "rank": 1})
    own = ExitRecord(status="diverged", time=T0, pid=2, rank=1, message="diverged at step 7: non-finite loss (nan)",
                     divergence={"step": 7, "check": "non_finite_loss", "rank": 1})
    ends = [RankEnding(rank=r, pid=r + 1, exit_code=3, signal=None, ended_at=T0) for r in (0, 1)]
    monitor = MonitorExit(exit_code=3, signal=None, ended_at=T0, trainer_pid=1, world_size=2, first_rank=0,
                          ranks=ends)
    outcome = classify_ranks_end(monitor, {0: other, 1: own}, None)
    assert outcome.cause is Cause.DIVERGED and "non-finite loss" in outcome.detail and outcome.diverged_at == 7


def test_divergences_roll_back_at_once_and_never_count_as_failures() -> None:
    past = [PastAttempt(n=1, started_at=T0, ended_at=T0 + 10, cause="crash", new_checkpoints=0)]
    end = AttemptEnd(cause=Cause.DIVERGED, ended_at=T0 + 20, new_checkpoints=0, diverged_at=120)
    decision = decide(end, past, now=T0 + 20, first_started_at=T0, policy=POLICY)
    assert decision.action == "restart" and decision.delay == 0.0
    assert "diverged at step 120" in decision.message and "rollback 1 of 2" in decision.message
    # and a crash after two divergences is still the job's first failure since the crash window began
    history = past + [PastAttempt(n=i, started_at=T0, ended_at=T0 + 10 * i, cause="diverged", new_checkpoints=0,
                                  diverged_at=100 + i) for i in (2, 3)]
    crash = decide(AttemptEnd(cause=Cause.CRASH, ended_at=T0 + 40, new_checkpoints=1), history[1:],
                   now=T0 + 40, first_started_at=T0, policy=POLICY)
    assert crash.action == "restart"


def test_past_max_rollbacks_the_job_fails_naming_every_bad_step() -> None:
    history = [PastAttempt(n=i, started_at=T0, ended_at=T0 + i, cause="diverged", new_checkpoints=1,
                           diverged_at=100 * i) for i in (1, 2)]
    end = AttemptEnd(cause=Cause.DIVERGED, ended_at=T0 + 5, new_checkpoints=0, diverged_at=300)
    decision = decide(end, history, now=T0 + 5, first_started_at=T0, policy=POLICY)
    assert decision.action == "finish" and decision.state is JobState.FAILED
    assert decision.end_reason is EndReason.DIVERGED
    assert "3 times (at steps 100, 200, 300)" in decision.message and "max_rollbacks=2" in decision.message


def test_divergences_before_a_user_restart_are_not_counted() -> None:
    history = [PastAttempt(n=1, started_at=T0, ended_at=T0 + 1, cause="diverged", new_checkpoints=1, diverged_at=9),
               PastAttempt(n=2, started_at=T0, ended_at=T0 + 2, cause="diverged", new_checkpoints=1, diverged_at=9),
               PastAttempt(n=3, started_at=T0, ended_at=T0 + 3, cause="user_restart", new_checkpoints=0)]
    end = AttemptEnd(cause=Cause.DIVERGED, ended_at=T0 + 5, new_checkpoints=0, diverged_at=9)
    assert decide(end, history, now=T0 + 5, first_started_at=T0, policy=POLICY).action == "restart"


def test_a_candidate_whose_file_is_gone_is_passed_over_with_its_reason() -> None:
    choice = choose_rollback([entry(10)], before_step=20)
    assert choice.path is None and choice.skipped == (("/c/step=10.ckpt", "missing"),)
