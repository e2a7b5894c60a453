"""How often to checkpoint: Young's and Daly's optimum from what a save costs and how often the job fails (pure).

Too rare, and a failure throws away the work since the last save; too often, and the
saves themselves stall training. Young (1974) puts the optimum interval at
sqrt(2 x save cost x mean time between failures); Daly (2006) refines it to
sqrt(2CM) - C for a save cost C that is not small against M. The mean time between
failures blends the assumed one (``checkpoint.assumed_mtbf``) with the job's own until
it has failed twice, then is the job's own (running time over failures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

OWN_RATE_AFTER = 2  # failures before the job's own rate replaces the assumed MTBF (one failure is a sample, not a rate)
AUTO_DEFAULT_STEPS = 100  # the interval before anything is measured (the trainer's, for a first attempt)
MIN_STEPS = 10  # never checkpoint more often than this, whatever the arithmetic says
MAX_STEPS = 100_000


@dataclass(frozen=True)
class Cadence:
    """The interval in force and why (``status``'s ``checkpointing.cadence``)."""

    every_n_train_steps: int
    interval_s: float
    save_s: float
    mtbf_s: float
    step_s: float
    failures: int

    def as_dict(self) -> dict[str, float | int]:
        return {"every_n_train_steps": self.every_n_train_steps, "interval_s": round(self.interval_s, 3),
                "save_s": round(self.save_s, 4), "mtbf_s": round(self.mtbf_s, 1), "step_s": round(self.step_s, 5),
                "failures": self.failures}


def optimal_interval(save_s: float, mtbf_s: float) -> float:
    """Daly's first-order optimum in seconds: sqrt(2 C M) - C (Young's sqrt(2 C M) when C << M), at least C."""
    if save_s <= 0 or mtbf_s <= 0:
        raise ValueError(f"save cost and MTBF must be > 0; got {save_s}, {mtbf_s}")
    if save_s >= 2 * mtbf_s:
        return mtbf_s  # saving takes longer than the job runs between failures: save as often as it fails
    return max(save_s, math.sqrt(2 * save_s * mtbf_s) - save_s)


def job_mtbf(running_s: float, failures: int, assumed_s: float) -> float:
    """The job's mean time between failures.

    Before its second failure the assumed MTBF counts as one more failure-free period, so one early failure
    does not make it absurdly short; from then on its own running time over its failures, so a job that
    fails every minute is not still credited a day-long prior (with 24 h, ten one-minute failures left 2.2 h).
    """
    if failures >= OWN_RATE_AFTER:
        return max(running_s, 1.0) / failures
    return (running_s + assumed_s) / (failures + 1)


def choose_cadence(*, save_s: float, step_s: float, running_s: float, failures: int,
                   assumed_mtbf_s: float) -> Cadence:
    """The checkpoint interval in steps for the next attempt."""
    mtbf = job_mtbf(running_s, failures, assumed_mtbf_s)
    interval = optimal_interval(max(save_s, 1e-3), mtbf)
    steps = round(interval / step_s) if step_s > 0 else MAX_STEPS
    return Cadence(every_n_train_steps=min(MAX_STEPS, max(MIN_STEPS, steps)), interval_s=interval, save_s=save_s,
                   mtbf_s=mtbf, step_s=step_s, failures=failures)
