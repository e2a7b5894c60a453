"""The job's time budget as seen by a training process: stop before ``--deadline`` (torch-free).

Not Lightning's ``Timer`` (``Trainer(max_time=...)``): the Timer restores the
training time elapsed so far from a resumed checkpoint, so a limit computed
from the wall-clock deadline would count earlier attempts twice. A deadline is
an absolute wall-clock time and needs no state at all.
"""

from __future__ import annotations

import time

# Stop this long before the deadline (at most): time to save last.ckpt, finish W&B and exit.
MAX_MARGIN_S = 60.0
MARGIN_FRACTION = 0.1


def stop_time(deadline: float, now: float | None = None) -> float:
    """When to stop for a budget ending at ``deadline`` (unix time): a margin of min(60 s, 10 % of what is left)."""
    now = time.time() if now is None else now
    remaining = max(0.0, deadline - now)
    return deadline - min(MAX_MARGIN_S, MARGIN_FRACTION * remaining)


class Deadline:
    """A stop time (unix) and whether it has ended the fit; checked at batch ends by ``ProgressCallback``."""

    def __init__(self, deadline: float, now: float | None = None) -> None:
        self.deadline = deadline
        self.stop_at = stop_time(deadline, now)
        self.triggered = False

    def due(self) -> bool:
        """Whether the stop time has come (one clock read)."""
        return time.time() >= self.stop_at
