"""Hostile files for the chaos soak's ``hostile_files`` kind (issue 33, item 4), and for the tests.

``plant(path, form)`` puts a hostile file where a job's file is: a FIFO, a 50 GB sparse file, a directory, a
link to ``/dev/zero``. ``HostileFiles`` does it to a random file the daemon reads of a job's attempt (or the
FUSE mount that never answers, ``tests/support/stalling_fs.py``, over its attempt dir: a hung NFS server) and
undoes it; ``answer_time`` is what the soak's invariant bounds for *other* jobs while it lasts (their
``status`` within 2 s; their restart time is the soak's usual figure).

The soak's ``hostile_files`` kind (``chaos_faults.KINDS``): the victim's ``fake_job`` has ``hang_at`` (it
stops rewriting its files), ``Soak`` plants once the heartbeat is still and undoes after
``chaos_faults.HOSTILE_HOLD_S``; meanwhile every job's ``status`` (and the victim's ``logs``) is bounded by
``chaos_faults.HOSTILE_ANSWER_S`` and the daemon must live.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from random import Random

from supervisor.api.client import Client
from supervisor.jobfiles.layout import JobLayout
from tests.support.stalling_fs import StallingFs, available

FORMS = ("fifo", "sparse", "directory", "link", "stall")
SPARSE_BYTES = 50 * 2**30


def plant(path: Path, form: str) -> None:
    """Replace ``path`` by the hostile ``form`` of file (not ``stall``: see ``HostileFiles``)."""
    remove(path)
    if form == "fifo":
        os.mkfifo(path)
    elif form == "sparse":
        with open(path, "wb") as f:
            f.truncate(SPARSE_BYTES)  # no block written
    elif form == "directory":
        path.mkdir()
    elif form == "link":
        path.symlink_to("/dev/zero")
    else:
        raise ValueError(f"not a planted form: {form}")


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file() or path.is_fifo():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def job_files(job_dir: Path, attempt: int) -> list[Path]:
    """The files the daemon reads of a job's attempt (rank 0's) and its manifest."""
    layout = JobLayout(job_dir)
    files = layout.attempt(attempt)
    return [files.heartbeat, files.exit_record, files.monitor_exit, files.metrics, files.stacks, files.stdout,
            files.stderr, layout.manifest]


class HostileFiles:
    """One injection: a random form in place of a random file of the job (``stall``: over its attempt dir)."""

    def __init__(self, job_dir: Path, attempt: int, rng: Random, forms: tuple[str, ...] = FORMS) -> None:
        usable = tuple(f for f in forms if f != "stall" or available() is None)
        self.form = rng.choice(usable)
        self.attempt_dir = JobLayout(job_dir).attempt(attempt).dir
        self.path = self.attempt_dir if self.form == "stall" else rng.choice(job_files(job_dir, attempt))
        self._mount: StallingFs | None = None

    def plant(self) -> None:
        if self.form == "stall":
            self._mount = StallingFs(self.attempt_dir).__enter__()
        else:
            plant(self.path, self.form)

    def undo(self) -> None:
        """The file (or the server) is back to normal: the planted thing goes, the job's own files are read."""
        if self._mount is not None:
            self._mount.close()
            self._mount = None
        elif self.form != "stall":
            remove(self.path)

    def describe(self) -> str:
        return f"{self.form} at {self.path}"


def answer_time(client: Client, job: str) -> float:
    """Seconds ``status`` of ``job`` took (the soak bounds it for every job the injection did not target)."""
    start = time.monotonic()
    client.call("status", job=job)
    return time.monotonic() - start
