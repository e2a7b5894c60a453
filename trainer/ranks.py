"""Which rank this trainer process is, and the hand-off of the resume preparation from rank 0 (torch-free).

A multi-rank attempt is one ``python -m trainer`` per rank, started with the
environment Lightning reads for externally launched processes (``RANK``,
``WORLD_SIZE``, ...); each writes its own files. Rank 0 alone rewinds the
manifest, then writes ``resume-ready.json``, which the others wait for: every
rank must see the same checkpoint directory (or top-k bookkeeping would differ
and one rank would enter a save's collective alone).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from supervisor.jobfiles.atomic import read_json, write_json_atomic

POLL_S = 0.05


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the job: global rank, local rank and world size."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def multi(self) -> bool:
        """Whether this is one rank of several."""
        return self.world_size > 1


def rank_from_env(environ: Mapping[str, str] = os.environ) -> RankInfo:
    """The rank the launcher gave this process (``RANK``, else ``LOCAL_RANK``); rank 0 of 1 when none did."""
    local = _int(environ.get("LOCAL_RANK"), 0)
    rank = _int(environ.get("RANK"), local)
    world = _int(environ.get("WORLD_SIZE"), 1)
    return RankInfo(rank=rank, local_rank=local, world_size=max(1, world))


def write_resume_ready(path: Path, ckpt: str | None) -> None:
    """Rank 0: the manifest is rewound for ``ckpt`` (None: a fresh start); the other ranks may go on."""
    write_json_atomic(path, {"ckpt": ckpt, "pid": os.getpid(), "time": time.time()})


def wait_resume_ready(path: Path, timeout_s: float) -> str | None:
    """Ranks >= 1: wait for rank 0's ``resume-ready.json``; returns the checkpoint it resumes from.

    Rank 0's death ends this process too (the monitor stops every rank), so
    the timeout only guards a run without the monitor.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        data = read_json(path)
        if isinstance(data, dict):
            ckpt = data.get("ckpt")
            return str(ckpt) if ckpt is not None else None
        if time.monotonic() >= deadline:
            raise TimeoutError(f"rank 0 did not prepare the resume within {timeout_s:.0f}s ({path} missing)")
        time.sleep(POLL_S)


def _int(raw: str | None, default: int) -> int:
    try:
        return int(raw) if raw is not None and raw.strip() else default
    except ValueError:
        return default
