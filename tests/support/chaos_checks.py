"""The chaos soak's invariants: what must hold after every injected fault (see tests/support/chaos.py).

Each check returns a list of violation messages (empty: the invariant held), so the
soak can count them per fault kind and print the job's history for each one.
``TrainerSampler`` checks "never two trainers of one job alive" continuously, in its
own thread, from the process table (psutil), independently of what the daemon says.
A DDP job legitimately runs one trainer per rank: the sampler tells them apart by the
attempt dir on their command line and the ``RANK`` in their environment, and counts
two attempts' trainers alive at once, or two processes of one attempt's rank. A standby
(``--standby``: attempt n + 1's processes, importing and waiting while attempt n runs) is
no trainer until its ``handover.json`` exists (written only once the job's lock is free).

After a divergence (the ``nan`` kind) the expected resume is the rollback's (docs/divergence.md: the newest
checkpoint with finite metrics saved strictly before the bad step, whatever ``resume_from`` says), and
``check_not_past_bad_step`` holds apart from it: no attempt resumes from a checkpoint saved at or after a
bad step before that step was known bad (an ``unusable`` line, or the previous attempt's exit record).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from supervisor.alerts.store import read_alerts
from tests.support.resume_oracle import (
    Save,
    expected_resume,
    live_saves,
    manifest_lines,
    newest_first,
    whole_on_disk,
)

TERMINAL = ("completed", "failed", "stopped")
BUDGET_OVERRUN_LIMIT_S = 15.0
# The alert events a restart decision sends (core.on_attempt_end): exactly one per restart.
RESTART_ALERT_EVENTS = ("restart", "hang")


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.Error, OSError):
        return []


def state_dir_processes(state_dir: Path, needle: str | None = None) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line names ``needle`` (default: the state dir)."""
    text = needle or str(state_dir)
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        cmd = _cmdline(proc)
        if not any(text in arg for arg in cmd):
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        found.append(proc)
    return found


def trainer_attempt(cmd: list[str], state_dir: Path) -> tuple[str, str] | None:
    """(job id, attempt) a trainer command line belongs to (its ``--attempt-dir``), or None for anything else.

    The attempt monitor's own command line carries the trainer's after it, so it is excluded by name.
    """
    if "--attempt-dir" not in cmd or any("attempt_monitor" in arg for arg in cmd):
        return None
    try:
        attempt_dir = Path(cmd[cmd.index("--attempt-dir") + 1])
    except IndexError:
        return None
    jobs = state_dir / "jobs"
    if attempt_dir.parent.parent.parent != jobs:
        return None
    return attempt_dir.parent.parent.name, attempt_dir.name


def trainer_job(cmd: list[str], state_dir: Path) -> str | None:
    """The job id a trainer command line belongs to, or None for anything else (see ``trainer_attempt``)."""
    found = trainer_attempt(cmd, state_dir)
    return found[0] if found else None


def handed_over_before(cmd: list[str], moment: float) -> bool:
    """Whether the standby with command line ``cmd`` was handed its attempt before ``moment``.

    Before: a handover written while this sample was listing processes could pair the
    standby with a previous attempt's process listed before that one exited.
    """
    try:
        handover = Path(cmd[cmd.index("--attempt-dir") + 1]) / "handover.json"
        return handover.stat().st_mtime < moment
    except (ValueError, IndexError, OSError):
        return False


def _rank(proc: psutil.Process) -> str:
    """The rank the monitor gave the process (``RANK``; a single-rank trainer has none: rank 0)."""
    try:
        return proc.environ().get("RANK", "0")
    except (psutil.Error, OSError):
        return "0"


class TrainerSampler(threading.Thread):
    """Samples the process table every ``interval`` s: two attempts of one job alive, or two processes of one rank."""

    def __init__(self, state_dir: Path, interval: float = 0.1) -> None:
        super().__init__(name="chaos-trainer-sampler", daemon=True)
        self.state_dir = state_dir
        self.interval = interval
        self.samples = 0
        self.doubles: dict[str, list[str]] = {}  # job -> messages (one per distinct pid pair)
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample_once()
            self._stop_event.wait(self.interval)

    def sample_once(self) -> None:
        """One look at every process: group the trainers by job, then by (attempt, rank)."""
        by_job: dict[str, dict[tuple[str, str], list[int]]] = {}
        began = time.time()
        for proc in psutil.process_iter():
            cmd = _cmdline(proc)
            found = trainer_attempt(cmd, self.state_dir)
            if found is None or (("--standby" in cmd) and not handed_over_before(cmd, began)):
                continue
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            job, attempt = found
            by_job.setdefault(job, {}).setdefault((attempt, _rank(proc)), []).append(proc.pid)
        with self._lock:
            self.samples += 1
            for job, ranks in by_job.items():
                attempts = {attempt for attempt, _ in ranks}
                doubled = {key: pids for key, pids in ranks.items() if len(pids) > 1}
                if len(attempts) < 2 and not doubled:
                    continue  # one attempt, one process per rank: a DDP job's ranks are no duplicates
                seen = ", ".join(f"attempt {a} rank {r}: pids {sorted(p)}" for (a, r), p in sorted(ranks.items()))
                message = f"two trainers of {job} alive at once ({seen})"
                if message not in self.doubles.setdefault(job, []):
                    self.doubles[job].append(message)

    def violations_for(self, job: str) -> list[str]:
        with self._lock:
            return list(self.doubles.get(job, []))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def manifest_before(manifest: Path, attempt: int) -> list[Save]:
    """The live checkpoints' save lines as the daemon saw them when it launched ``attempt``.

    Replays the manifest without the lines that attempt (or a later one) wrote: its own
    rewind (``abandon``) and saves happen after the daemon chose where it resumes from.
    Read by the tests' own rule (``resume_oracle``), never the product's.
    """
    return live_saves(manifest_lines(manifest), before_attempt=attempt)


def _where_now(save: Save, attempt: int) -> Save:
    """The save at its current place: the relaunched attempt may have moved it to ``abandoned/<attempt>/``."""
    path = Path(save["path"])
    if path.exists():
        return save
    moved = path.parent / "abandoned" / str(attempt) / path.name
    return {**save, "path": str(moved)} if moved.exists() else save


def check_resume(job_dir: Path, attempt: int, resumed_from: str | None, resume_from: str,
                 corrupted: Mapping[str, Sequence[float]], started_at: float) -> list[str]:
    """The relaunched ``attempt`` (launched at ``started_at``) resumed from a checkpoint that verifies,
    the one the policy names: computed here over the manifest by ``resume_oracle``'s rule and its own
    whole-file check, not by the product's ``choose_resume`` (which would agree with any daemon using it).

    ``corrupted``: files the soak broke on purpose, with each time it did. A corruption counts
    for this attempt when it came after that save of the file (a later save of the same name is
    a new, whole file) and before the attempt was launched: the soak breaks a checkpoint while
    the attempt that resumed from it runs, and only the next launch can see it broken.
    """
    manifest = job_dir / "checkpoints" / "manifest.jsonl"
    saves = manifest_before(manifest, attempt)
    saved_at: dict[str, float] = {str(s["path"]): float(s.get("time", 0.0)) for s in saves}
    broken = {path for path, when_saved in saved_at.items()
              if any(when_saved <= when < started_at for when in corrupted.get(path, ()))}

    def verify(save: Save) -> str | None:
        if save["path"] in broken:
            return "corrupted by the soak"
        now = _where_now(save, attempt)
        try:
            if now["path"] == save["path"] and os.stat(now["path"]).st_mtime > saved_at[save["path"]] + 1.0:
                return None  # replaced by a later save of the same name; it was whole when written
        except OSError:
            pass
        return whole_on_disk(now)

    bad_step = diverged_before(job_dir, attempt)
    if bad_step is not None:
        expected = expected_rollback(saves, bad_step, verify)
    else:
        expected = expected_resume(saves, resume_from, verify=verify)
    problems = []
    if resumed_from is not None:
        if resumed_from in broken:
            problems.append(f"attempt {attempt} resumed from {resumed_from}, a checkpoint the soak corrupted")
        else:
            save = next((s for s in saves if s["path"] == resumed_from), None)
            if save is None:
                problems.append(f"attempt {attempt} resumed from {resumed_from}, not a live checkpoint")
            else:
                why = verify(save)
                if why is not None:
                    problems.append(f"attempt {attempt} resumed from {resumed_from}, which does not verify: {why}")
    if (expected or None) != (resumed_from or None):
        rule = f"the rollback before step {bad_step}" if bad_step is not None else f"resume_from={resume_from}"
        problems.append(f"attempt {attempt} resumed from {resumed_from}; {rule} names {expected or 'scratch'}")
    return problems


def diverged_before(job_dir: Path, attempt: int) -> int | None:
    """The first bad step of attempt ``attempt - 1`` when its loss diverged (its exit record, read as JSON)."""
    if attempt < 2:
        return None
    try:
        record = json.loads((job_dir / "attempts" / str(attempt - 1) / "exit.json").read_text())
        if record.get("status") == "diverged":
            return int(record["divergence"]["step"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    return None


def expected_rollback(saves: Sequence[Save], bad_step: int, verify: Any) -> str | None:
    """The rollback's checkpoint (rollback_margin_steps 0): the newest finite save before ``bad_step`` that
    verifies, else scratch."""
    for save in newest_first(saves):
        if int(save["step"]) < bad_step and save.get("finite", True) is not False and verify(save) is None:
            return str(save["path"])
    return None


def check_not_past_bad_step(job_dir: Path, attempt: int, resumed_from: str | None) -> list[str]:
    """``attempt`` did not resume from weights at or past a bad step: not from a save followed by an
    ``unusable`` line of an earlier attempt whose step it reached, nor at or past the step at which the
    previous attempt diverged (its exit record)."""
    if resumed_from is None:
        return []
    lines = [line for line in manifest_lines(job_dir / "checkpoints" / "manifest.jsonl")
             if int(line.get("attempt") or 0) < attempt]
    # the save line that made resumed_from live when the attempt was launched: the last one of that path
    index = next((i for i in range(len(lines) - 1, -1, -1)
                  if lines[i].get("event") == "save" and lines[i].get("path") == resumed_from), None)
    if index is None:
        return []  # not a live checkpoint at all: check_resume says so
    step = int(lines[index]["step"])
    marked = next((line for line in lines[index + 1:]
                   if line.get("event") == "unusable" and step >= int(line.get("from_step", step + 1))), None)
    problems = [] if marked is None else [
        f"attempt {attempt} resumed from {resumed_from} (step {step}), saved before the manifest marked every "
        f"checkpoint from step {marked['from_step']} unusable ({marked.get('why')})"]
    bad_step = diverged_before(job_dir, attempt)
    if bad_step is not None and step >= bad_step:
        problems.append(f"attempt {attempt} resumed from {resumed_from} (step {step}); attempt {attempt - 1} "
                        f"diverged at step {bad_step}")
    return problems


def check_gave_up_diverged(status: dict[str, Any], max_rollbacks: int) -> list[str]:
    """A persistent divergence: the job ended failed/diverged at its ``max_rollbacks + 1``-th divergence."""
    problems = []
    if (status["state"], status.get("end_reason")) != ("failed", "diverged"):
        problems.append(f"a persistent divergence ended {status['state']} ({status.get('end_reason')}), "
                        "not failed (diverged)")
    diverged = [a["n"] for a in status["attempts"] if a.get("reason") == "diverged"]
    if len(diverged) != max_rollbacks + 1:
        problems.append(f"{len(diverged)} attempt(s) ended diverged ({diverged}); max_rollbacks={max_rollbacks} "
                        f"must give up at divergence {max_rollbacks + 1}")
    return problems


def check_final(status: dict[str, Any], target_steps: int | None, budget_s: float | None) -> list[str]:
    """A finished job: terminal, completed, at its target step; within its budget."""
    problems = []
    state, reason = status["state"], status.get("end_reason")
    if state not in TERMINAL:
        return [f"stuck in {state}"]
    if state != "completed":
        problems.append(f"ended {state} ({reason}): every injected fault is recoverable")
    elif reason == "finished" and target_steps is not None and status.get("global_step") != target_steps:
        problems.append(f"completed at global step {status.get('global_step')}, the target is {target_steps}")
    if budget_s is not None:
        overrun = float(status["budget"]["used"]) - budget_s
        if overrun > BUDGET_OVERRUN_LIMIT_S:
            problems.append(f"budget overrun {overrun:.1f} s > {BUDGET_OVERRUN_LIMIT_S:.0f} s")
    return problems


def check_alerts(state_dir: Path, status: dict[str, Any]) -> list[str]:
    """Every restart produced exactly one restart alert record (``alerts.jsonl``)."""
    records = [r for r in read_alerts(state_dir, job_id=status["id"])
               if r.get("event") in RESTART_ALERT_EVENTS]
    by_attempt: dict[Any, int] = {}
    for record in records:
        key = (record.get("details") or {}).get("attempt")
        by_attempt[key] = by_attempt.get(key, 0) + 1
    problems = []
    restarts = int(status.get("restarts") or 0)
    if len(records) != restarts:
        problems.append(f"{restarts} restart(s) but {len(records)} restart alert record(s)")
    problems += [f"{count} restart alerts for attempt {n}" for n, count in by_attempt.items() if count > 1]
    return problems


def check_attempt_ended(attempt_dir: Path, grace_s: float = 5.0) -> list[str]:
    """No process of an attempt that has ended (a rank that outlived the one killed); kills any found.

    Matches the attempt dir as a whole command-line argument or a path under it (``attempts/1`` is
    not ``attempts/10``).
    """
    exact, under = str(attempt_dir), str(attempt_dir) + os.sep
    deadline = time.monotonic() + grace_s
    while True:
        left = [p for p in state_dir_processes(attempt_dir, exact)
                if any(arg == exact or arg.startswith(under) for arg in _cmdline(p))]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    problems = []
    for proc in left:
        problems.append(f"process {proc.pid} of ended attempt {attempt_dir.name} alive: "
                        f"{' '.join(_cmdline(proc))[:160]}")
        try:
            proc.kill()
        except psutil.Error:
            pass
    return problems


def check_no_leftovers(state_dir: Path, job_dir: Path, grace_s: float = 5.0) -> list[str]:
    """No process of the job is left once it ended (monitor, trainer, their children); kills any found."""
    deadline = time.monotonic() + grace_s
    while True:
        left = state_dir_processes(state_dir, str(job_dir) + os.sep)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    problems = []
    for proc in left:
        problems.append(f"process {proc.pid} left behind: {' '.join(_cmdline(proc))[:160]}")
        try:
            proc.kill()
        except psutil.Error:
            pass
    return problems
