"""``trainer.profiler``: send the profiler's report to the attempt directory, where the job page finds it.

Lightning builds ``profiler: simple | advanced | pytorch`` with no file name, and
then only logs the report. Built here with ``dirpath=<attempt dir>`` and
``filename="profile"``, the report lands in ``attempts/<n>/fit-profile.txt``
(Lightning prefixes the stage and, under DDP, suffixes the rank; the PyTorch profiler also
writes its traces there).
A profiler given as an object (``callbacks``-style config is not accepted here) is
left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROFILE_FILENAME = "profile"
PROFILERS = {"simple": "SimpleProfiler", "advanced": "AdvancedProfiler", "pytorch": "PyTorchProfiler"}


def profiler_into_attempt_dir(trainer_args: dict[str, Any], attempt_dir: Path) -> dict[str, Any]:
    """``trainer_args`` with a named profiler replaced by one that writes its report into ``attempt_dir``."""
    name = trainer_args.get("profiler")
    if not isinstance(name, str) or name.lower() not in PROFILERS:
        return trainer_args  # None, an object, or a name Lightning will judge itself
    import pytorch_lightning.profilers as profilers  # Lightning, at the fit only

    cls = getattr(profilers, PROFILERS[name.lower()])
    return {**trainer_args, "profiler": cls(dirpath=str(attempt_dir), filename=PROFILE_FILENAME)}
