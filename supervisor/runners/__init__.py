"""Attempt runners: the one place that knows where and how an attempt's trainer processes run.

The loop (``supervisor.core``) drives every runner through the same narrow
interface (``base.AttemptRunner``; ``base.StandbyRunner`` adds ``prepare`` and
``promote``) and never knows which one it drives. There are two backends:

- local (``local.py``, ``standby.py``, ``zygote.py``, ``zygotes.py``): an
  attempt monitor per attempt on this node, watched through pidfds, one rank or
  several (DDP). ``StandbyLocalRunner`` adds a standby trainer per job that
  takes over a restart; the standbys after a job's first are forked from the
  job's zygote, which imported once (exec'd when the zygote cannot fork).
- Slurm (``slurm.py``, ``slurm_script.py``, ``slurm_states.py``): an attempt is
  one ``sbatch`` allocation whose ranks ``srun`` starts, polled through
  ``squeue``, ``scontrol`` and ``sacct``; no standby.

Each backend has a record (``backend.Backend``: its runner's factory, rank
layout, options, what it supports, how ``status`` shows an attempt), listed in
``registry.BACKENDS``. A new backend is a new module here plus its line there,
never a branch in the core.
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
