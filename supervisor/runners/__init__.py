"""Attempt runners: the one place that knows where and how an attempt's trainer processes run.

The loop (``supervisor.core``) drives every runner through the same narrow
interface (``base.AttemptRunner``) and never knows which one it drives. Today
there is one, ``LocalRunner`` (an attempt monitor per attempt on this node,
watched through pidfds). A standby trainer, per-rank DDP and Slurm are new
modules here, not branches in the core.
"""

from supervisor.runners.base import (
    AttemptExit,
    AttemptRef,
    AttemptRunner,
    AttemptSpec,
    LaunchRefused,
    Observation,
    Phase,
    RankLayout,
    RunnerNotice,
    StandbyRunner,
)
from supervisor.runners.local import LocalRunner

__all__ = [
    "AttemptExit",
    "AttemptRef",
    "AttemptRunner",
    "AttemptSpec",
    "LaunchRefused",
    "LocalRunner",
    "Observation",
    "Phase",
    "RankLayout",
    "RunnerNotice",
    "StandbyRunner",
]
