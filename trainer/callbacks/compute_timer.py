"""``ComputeTimer``: how long a step's own compute took, without the time spent waiting for other ranks.

From batch start to the loss (``on_before_backward``): the forward pass. The
gradient all-reduce, where a fast rank waits for a slow one, happens in the
backward, after it; so a straggler shows its slowness here and its peers do not.
On a GPU the host only queues kernels: CUDA events time the device instead, read
a step later once they completed (``query``, never a synchronisation).
"""

from __future__ import annotations

import time
from collections import deque

import pytorch_lightning as pl
import torch


class ComputeTimer:
    """``start`` at batch start, ``stop`` when the loss is ready; ``stop`` returns seconds when known."""

    def __init__(self) -> None:
        self._started: float | None = None
        self._cuda_start: torch.cuda.Event | None = None
        self._pending: deque[tuple[torch.cuda.Event, torch.cuda.Event]] = deque(maxlen=4)

    def start(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            self._cuda_start = torch.cuda.Event(enable_timing=True)
            self._cuda_start.record()
        else:
            self._started = time.perf_counter()

    def stop(self) -> float | None:
        if self._cuda_start is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((self._cuda_start, end))
            self._cuda_start = None
            return self._harvest()
        if self._started is None:
            return None
        seconds, self._started = time.perf_counter() - self._started, None
        return seconds

    def _harvest(self) -> float | None:
        """The oldest finished CUDA interval, in seconds (None while the device is still on it)."""
        if self._pending and self._pending[0][1].query():
            start, end = self._pending.popleft()
            return float(start.elapsed_time(end)) / 1000.0
        return None
