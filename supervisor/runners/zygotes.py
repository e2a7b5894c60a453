"""The standby runner's zygotes, one per job: started when wanted, replaced when stale or killed.

A zygote that *says* why it cannot fork (an import started a thread, CUDA was
touched, the config does not load) would say it again: its job's standbys are
exec'd from then on. One that dies without a word was killed (the OOM killer, a
person): it is replaced, up to ``MAX_ZYGOTE_STARTS`` per job, so one bad moment
does not cost the job its fast standbys for good. For people, each zygote is
mirrored in ``<job dir>/zygote.json`` (``status``'s ``zygote``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psutil

from supervisor.jobfiles.atomic import read_json, write_json_atomic
from supervisor.processes.control import is_same_process, start_time
from supervisor.runners.zygote import Zygote, ZygoteState, start_zygote

log = logging.getLogger("ml_supervisor")

VIEW_FILE = "zygote.json"  # in the job dir
MAX_ZYGOTE_STARTS = 3  # per job: the first and two replacements of zygotes that were killed


def replace_after_failure(said_why: bool, starts: int) -> bool:
    """Whether a failed zygote is replaced (else the job's standbys are exec'd from now on)."""
    return not said_why and starts < MAX_ZYGOTE_STARTS


class JobZygotes:
    """The zygotes of the runner's jobs (see the module docstring)."""

    def __init__(self) -> None:
        self._zygotes: dict[str, Zygote] = {}
        self._starts: dict[str, int] = {}
        self._exec_only: set[str] = set()  # jobs whose zygote refused: their standbys are exec'd

    def get(self, job_id: str, trainer_command: list[str], *, cwd: str, env: dict[str, str],
            job_dir: Path) -> Zygote | None:
        """The job's zygote, started if it has none; None when the job's standbys are exec'd."""
        if job_id in self._exec_only:
            return None
        zygote = self._zygotes.get(job_id)
        if zygote is not None:
            _poll(zygote)
            if zygote.state == ZygoteState.FAILED:
                self.failed(job_id, zygote.failure or "failed")
                if job_id in self._exec_only:
                    return None
                zygote = None
            elif zygote.state == ZygoteState.READY and zygote.stale():
                log.info("job %s: its zygote is stale (code or config changed); starting a fresh one", job_id)
                self.stop(job_id)
                zygote = None
        if zygote is None:
            try:
                zygote = start_zygote(job_id, trainer_command, cwd=cwd, env=env, job_dir=job_dir)
            except OSError as exc:
                log.warning("job %s: cannot start its zygote (%s); its standbys are exec'd", job_id, exc)
                self._exec_only.add(job_id)
                return None
            self._zygotes[job_id] = zygote
            self._starts[job_id] = self._starts.get(job_id, 0) + 1
            _publish(zygote)
            log.info("job %s: zygote starting (pid %d)", job_id, zygote.proc.pid)
        return zygote

    def failed(self, job_id: str, why: str) -> None:
        """The job's zygote failed (or did not answer a fork): stop it; replace it later or give up on it."""
        zygote = self._zygotes.get(job_id)
        said_why = zygote is not None and zygote.said_why
        starts = self._starts.get(job_id, 0)
        self.stop(job_id)
        if replace_after_failure(said_why, starts):
            log.warning("job %s: its zygote died (%s); a fresh one replaces it (start %d of %d)", job_id, why,
                        starts + 1, MAX_ZYGOTE_STARTS)
        else:
            log.warning("job %s: its zygote failed (%s); its standbys are exec'd from now on", job_id, why)
            self._exec_only.add(job_id)

    def tick(self) -> None:
        """Read what each zygote said, so ``status`` shows it ready (or gone) without waiting for a fork."""
        for zygote in self._zygotes.values():
            _poll(zygote)

    def stop(self, job_id: str) -> None:
        """Kill the job's zygote, if it has one."""
        zygote = self._zygotes.pop(job_id, None)
        if zygote is not None:
            (zygote.job_dir / VIEW_FILE).unlink(missing_ok=True)
            zygote.stop()

    def forget(self, job_id: str) -> None:
        """The job ended for good: no zygote for it, and a clean slate should it come back."""
        self.stop(job_id)
        self._exec_only.discard(job_id)
        self._starts.pop(job_id, None)

    def close(self) -> None:
        """Stop every zygote (the daemon is leaving)."""
        for job_id in list(self._zygotes):
            self.stop(job_id)


def _poll(zygote: Zygote) -> None:
    before = zygote.state
    zygote.poll()
    if zygote.state != before:
        _publish(zygote)


def _publish(zygote: Zygote) -> None:
    write_json_atomic(zygote.job_dir / VIEW_FILE, {"state": zygote.state, "pid": zygote.proc.pid,
                                                   "started": start_time(zygote.proc.pid)}, durable=False)


def zygote_view(job_dir: Path) -> dict[str, Any] | None:
    """``status``'s ``zygote``: ``{state, pid, rss_mb}`` of the job's zygote, or None.

    A forked standby shares the zygote's pages until it writes them, so the zygote's
    ``rss_mb`` and the standby's overlap: their sum overstates what the two cost the node.
    """
    data = read_json(job_dir / VIEW_FILE)
    if not isinstance(data, dict) or not data.get("pid"):
        return None
    pid = int(data["pid"])
    if not is_same_process(pid, data.get("started")):
        return None  # gone (its pid may be someone else's now)
    try:
        rss = psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return None
    return {"state": data.get("state"), "pid": pid, "rss_mb": round(rss, 1)}
