"""The Slurm runner: each attempt is one Slurm job (``sbatch``), its ranks started by ``srun``.

Slurm allocates the nodes and starts the ranks; Lightning's SLURM environment
reads ranks and world size from them. The daemon stays the **one owner of
restarts**: every allocation is submitted with ``--no-requeue`` (the trainer runs
Lightning with ``auto_requeue=False``), and a new allocation is never submitted
while an earlier Slurm job of the same supervisor job is not terminal (found by
its job name in ``squeue``; a rule the controller enforces for every node, where
a file lock on NFS/Lustre would not).

State comes from ``squeue`` (one call for all our jobs, at most every
``poll_s`` seconds, backing off while it fails: slurmctld is shared), then
``scontrol show job``, then ``sacct`` when accounting exists, and the batch
script's end record (``slurm-end.json``) on the shared filesystem, which outlives
Slurm's memory of finished jobs (``MinJobAge``).

With ``slurm.in_allocation_restarts`` > 0 the allocation outlives its first attempt:
the batch script holds it, and the next attempt's ``launch`` becomes a new ``srun``
step in it (``slurm_alloc``: the next-step file, the node choice, spares) while the
allocation still runs and has restarts left; else a new allocation as before.
Such an attempt ends with its **step** (its own end record), not with the job.

Runner state (``attempts.runner_state``)::

    {"slurm_job_id": str, "state": str (last Slurm state seen; the step's once it ended),
     "nodes": str (the step's nodes, else Slurm's node list), "slurm_step_id": str,
     "hold": bool (the allocation is held for restarts inside it), "in_allocation": int (0: the
     allocation's first attempt; k: its k-th restart inside it), "excluded": [str], "spares": [str],
     "standby": bool (the step was the attempt's standby step, promoted: slurm_standby)}
"""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from supervisor.jobfiles.atomic import read_json
from supervisor.jobfiles.deadline import FileStalled
from supervisor.jobfiles.exitrecord import ExitRecord, write_exit_record
from supervisor.jobfiles.safe_read import list_dir
from supervisor.runners.base import (
    AttemptExit,
    AttemptRef,
    AttemptSpec,
    LaunchRefused,
    Notify,
    Observation,
    OrphanCheck,
    Phase,
    RunnerNotice,
    RunnerState,
)
from supervisor.runners.slurm_alloc import (
    Allocation,
    new_allocation_note,
    options_of,
    read_allocation,
    write_allocation,
)
from supervisor.runners.slurm_health import submit_excludes
from supervisor.runners.slurm_held import HeldAllocations, exists, first_line, mtime, run_command
from supervisor.runners.slurm_script import (
    ALLOC_DIR,
    END_RECORD,
    JOB_NAME_PREFIX,
    PROBE_DIR,
    render_batch_script,
    slurm_job_name,
)
from supervisor.runners.slurm_standby import SlurmStandby, SlurmStandbys
from supervisor.runners.slurm_states import SQUEUE_FORMAT, QueueEntry, end_exit, parse_sbatch, parse_squeue, phase_of

log = logging.getLogger("ml_supervisor")

BATCH_SCRIPT = "slurm-batch.sh"
# How long a running allocation may take to show the daemon every node's probe file (written by the batch
# script's first step, seconds after the start; generous for a slow shared filesystem's attribute caching).
PROBE_WAIT_S = float(os.environ.get("ML_SUPERVISOR_SLURM_PROBE_WAIT", "60"))
MAX_POLL_BACKOFF_S = 120.0
# Environment the daemon may itself carry (run inside an allocation) that must not leak into a new one.
_DROPPED_ENV = ("CUDA_VISIBLE_DEVICES",)


class SlurmRunner(HeldAllocations, SlurmStandbys):
    """Attempts as Slurm jobs (see the module docstring)."""

    kind = "slurm"

    def __init__(self, notify: Notify, *, poll_s: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 probe_wait_s: float = PROBE_WAIT_S) -> None:
        self._notify = notify
        self._probe_wait_s = probe_wait_s
        self._poll_s = poll_s
        self._clock = clock
        self._queue: dict[str, QueueEntry] = {}
        self._queue_ok = False  # the last squeue answered
        self._next_poll = 0.0
        self._failures = 0
        # job id -> (slurm job id, last state seen, the step's end record when the attempt is a held step)
        self._followed: dict[str, tuple[str, str | None, Path | None]] = {}
        self._alloc_dirs: dict[str, Path] = {}  # job id -> the control dir of its held allocation
        self._standbys: dict[str, SlurmStandby] = {}  # job id -> its standby step (slurm_standby)
        self._failed_standbys: dict[tuple[str, int], int] = {}  # (job id, attempt) -> standby steps never ready
        self._user = pwd.getpwuid(os.geteuid()).pw_name

    # -- the queue ---------------------------------------------------------------------------------
    def _refresh(self, *, force: bool = False) -> bool:
        """Poll ``squeue`` unless polled recently (or backing off); whether the queue view is current."""
        now = self._clock()
        if not force and now < self._next_poll:
            return self._queue_ok
        try:
            done = run_command(["squeue", "-h", "--states=all", f"--user={self._user}", "-o", SQUEUE_FORMAT])
        except (OSError, subprocess.SubprocessError) as exc:
            done = subprocess.CompletedProcess([], 1, "", str(exc))
        if done.returncode == 0:
            self._queue = {k: e for k, e in parse_squeue(done.stdout).items() if e.name.startswith(JOB_NAME_PREFIX)}
            self._queue_ok, self._failures = True, 0
            self._next_poll = now + self._poll_s
        else:
            self._failures += 1
            self._queue_ok = False
            self._next_poll = now + min(MAX_POLL_BACKOFF_S, self._poll_s * 2 ** self._failures)
            log.warning("squeue failed (%s); polling Slurm again in %.0fs", first_line(done.stderr),
                        self._next_poll - now)
        return self._queue_ok

    def _forgotten_state(self, slurm_job_id: str) -> str | None:
        """The state of a job squeue no longer lists: ``scontrol show job``, then ``sacct`` (often disabled)."""
        try:
            shown = run_command(["scontrol", "-o", "show", "job", slurm_job_id])
            if shown.returncode == 0:
                for field in shown.stdout.split():
                    if field.startswith("JobState="):
                        return field.split("=", 1)[1]
            acct = run_command(["sacct", "-n", "-X", "-P", "-j", slurm_job_id, "-o", "State"])
            if acct.returncode == 0 and acct.stdout.strip():
                return acct.stdout.split()[0]
        except (OSError, subprocess.SubprocessError):
            pass
        return None

    # -- launch and adoption ------------------------------------------------------------------------
    def launch(self, spec: AttemptSpec) -> RunnerState:
        """The next step in the job's held allocation when it may take one; else ``sbatch`` a new allocation.

        A new allocation is never submitted while an earlier one of the job is still alive.
        """
        slurm: Mapping[str, Any] = spec.options.get("slurm") or {}
        if not slurm:
            raise LaunchRefused("the job has no slurm: section", retry=False)
        if spec.run_as is not None:  # sbatch from here submits as the daemon: never another user's code as root
            raise LaunchRefused("the Slurm backend runs jobs as the daemon's user only", retry=False)
        if not self._refresh(force=True):
            raise LaunchRefused("squeue does not answer: not submitting blind (a duplicate could run)", retry=True)
        previous = read_allocation(spec.attempt_dir)
        if previous is not None:
            inside = self._launch_inside(spec, slurm, previous)
            if inside is not None:
                return inside
        name = slurm_job_name(spec.job_id)
        alive = [e for e in self._queue.values() if e.name == name and phase_of(e.state) is not Phase.ENDED]
        if alive:
            # One owner of restarts: never a second allocation beside one Slurm has not finished.
            raise LaunchRefused(f"Slurm job {alive[0].slurm_job_id} of this job is still {alive[0].state}",
                                retry=True)
        # Nodes found bad in an earlier allocation and still bad now (one an admin returned comes back).
        still_bad = self._bad_nodes(",".join(previous.excluded)) if previous and previous.excluded else {}
        # ... and those the daemon found bad in the last allocation (a node-level rank death, a failed probe),
        # unless Slurm refuses the job for it (too few nodes left): its own findings never make it unschedulable.
        faulty = previous.faulty if previous else {}
        excluded = submit_excludes(still_bad, faulty)
        done = self._sbatch(spec, slurm, excluded)
        if done.returncode != 0 and set(excluded) - set(still_bad):
            log.warning("job %s: sbatch refused the job with --exclude=%s (%s); submitting without the nodes "
                        "found bad by the daemon", spec.job_id, ",".join(excluded), first_line(done.stderr))
            excluded = sorted(still_bad)
            done = self._sbatch(spec, slurm, excluded)
        if done.returncode != 0:
            raise OSError(f"sbatch refused the job: {first_line(done.stderr) or done.returncode}")
        try:
            slurm_job_id = parse_sbatch(done.stdout)
        except ValueError as exc:
            raise OSError(str(exc)) from None
        log.info("job %s: attempt %d submitted as Slurm job %s", spec.job_id, spec.attempt, slurm_job_id)
        hold = options_of(slurm)[2] > 0
        alloc_dir = spec.attempt_dir / ALLOC_DIR
        if hold:
            write_allocation(spec.attempt_dir, Allocation(slurm_job_id, str(alloc_dir), excluded=list(excluded)))
            self._alloc_dirs[spec.job_id] = alloc_dir
        self._followed[spec.job_id] = (slurm_job_id, "PENDING", spec.attempt_dir / END_RECORD if hold else None)
        self._next_poll = 0.0  # look at the new job at the next observe
        return {"slurm_job_id": slurm_job_id, "state": "PENDING", "nodes": "", "nodes_expected": spec.ranks.nodes,
                "hold": hold, "in_allocation": 0, "excluded": list(excluded),
                "launch_note": new_allocation_note(slurm_job_id, excluded)}

    def _sbatch(self, spec: AttemptSpec, slurm: Mapping[str, Any],
                excluded: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Write the attempt's batch script (with ``--exclude`` of ``excluded``) and submit it."""
        spec.attempt_dir.mkdir(parents=True, exist_ok=True)
        script = spec.attempt_dir / BATCH_SCRIPT
        script.write_text(render_batch_script(job_id=spec.job_id, attempt_dir=spec.attempt_dir,
                                              workdir=spec.workdir, command=spec.command, slurm=slurm,
                                              exclude=excluded))
        env = {k: v for k, v in spec.env.items() if k not in _DROPPED_ENV}
        try:
            return run_command(["sbatch", "--parsable", str(script)], env=env, cwd=spec.workdir)
        except subprocess.SubprocessError as exc:
            raise OSError(f"sbatch: {exc}") from None

    def adopt(self, ref: AttemptRef) -> Observation:
        """Follow a Slurm job an earlier daemon submitted (by its id in the runner state)."""
        seen = self.observe(ref)
        hold = bool(ref.state.get("hold"))
        if hold:
            self._alloc_dirs[ref.job_id] = Path(str(ref.state.get("alloc_dir") or ref.attempt_dir / ALLOC_DIR))
        if seen.phase is not Phase.ENDED:
            self._followed[ref.job_id] = (str(ref.state.get("slurm_job_id")), seen.state.get("state"),
                                          ref.attempt_dir / END_RECORD if hold else None)
        return seen

    # -- observing ---------------------------------------------------------------------------------
    def observe(self, ref: AttemptRef) -> Observation:
        """Slurm's state of the attempt's job; ended once Slurm says terminal (or forgot it)."""
        state = dict(ref.state)
        slurm_job_id = str(state.get("slurm_job_id") or "")
        current = self._refresh()
        entry = self._queue.get(slurm_job_id)
        last_phase = phase_of(state.get("state")) or Phase.PENDING
        if entry is not None:
            state["state"] = entry.state
            if entry.nodes and entry.nodes != "(null)":
                state["nodes"] = entry.nodes
            phase = phase_of(entry.state) or last_phase
        elif not current:
            return Observation(last_phase, state)  # Slurm does not answer: nothing is known to have changed
        else:
            forgotten = self._forgotten_state(slurm_job_id)
            if forgotten is not None:
                state["state"] = forgotten
            phase = phase_of(forgotten) or Phase.ENDED  # forgotten by everything: ended
        if phase is Phase.RUNNING and not state.get("probed"):
            unshared = self._check_probes(ref, state)
            if unshared is not None:
                return Observation(Phase.ENDED, state, unshared)
        if state.get("hold"):
            return self._observe_step(ref, state, phase, last_phase)
        if phase is not Phase.ENDED:
            return Observation(phase, state)
        try:
            record = read_json(ref.attempt_dir / END_RECORD)
        except FileStalled:  # the shared filesystem does not answer: nothing is known to have changed yet
            return Observation(last_phase, dict(ref.state))
        slurm_state = state.get("state") if phase_of(state.get("state")) is Phase.ENDED else None
        ended = end_exit(record if isinstance(record, dict) else None, slurm_state, now=time.time())
        self._followed.pop(ref.job_id, None)
        return Observation(Phase.ENDED, state, ended)

    def _check_probes(self, ref: AttemptRef, state: RunnerState) -> AttemptExit | None:
        """The daemon must see every node's probe file: else the state dir is not shared, and the job fails.

        Sets ``state["probed"]`` once they are all seen; after ``PROBE_WAIT_S`` of running without them,
        records a config error (the exit record, here, where the daemon reads it), kills the allocation
        and returns how the attempt ended.
        """
        expected = int(state.get("nodes_expected") or 1)
        probe_dir = ref.attempt_dir / PROBE_DIR
        try:
            seen = sorted(list_dir(probe_dir) or [])
        except FileStalled:
            return None  # the shared filesystem does not answer: not counted as a missing probe
        if len(seen) >= expected:
            state["probed"] = True
            return None
        now = time.time()
        first = float(state.setdefault("running_seen_at", now))
        if now - first < self._probe_wait_s:
            return None
        message = (f"the state dir is not on a filesystem this daemon shares with the Slurm nodes: it sees "
                   f"{len(seen)} of {expected} nodes' probe files in {probe_dir} (put --state-dir on the "
                   "cluster's shared filesystem)")
        write_exit_record(ref.attempt_dir / "exit.json", ExitRecord(status="config_error", time=now,
                                                                    pid=os.getpid(), message=message))
        self._scancel(ref, "--signal=KILL", "--full")  # the whole allocation, held or not: it cannot work
        self._scancel(ref)
        log.error("job %s: %s", ref.job_id, message)
        self._followed.pop(ref.job_id, None)
        return AttemptExit(exit_code=None, signal=None, ended_at=now, error=message)

    # -- operations --------------------------------------------------------------------------------
    def _scancel(self, ref: AttemptRef, *args: str, step: str | None = None) -> bool:
        """``scancel ARGS`` of the attempt's Slurm job, or of one of its steps (``<job>.<step>``); whether it was
        accepted."""
        slurm_job_id = str(ref.state.get("slurm_job_id") or "")
        if not slurm_job_id:
            return False
        target = f"{slurm_job_id}.{step}" if step else slurm_job_id
        try:
            done = run_command(["scancel", *args, target])
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("job %s: scancel %s %s failed: %s", ref.job_id, " ".join(args), target, exc)
            return False
        if done.returncode != 0:
            log.warning("job %s: scancel %s %s: %s", ref.job_id, " ".join(args), target, first_line(done.stderr))
        self._next_poll = 0.0
        return done.returncode == 0

    def _scancel_by_name(self, ref: AttemptRef) -> None:
        name = slurm_job_name(ref.job_id)
        for args in (["--signal=KILL", "--full"], []):
            try:
                done = run_command(["scancel", *args, f"--user={self._user}", f"--name={name}"])
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("job %s: scancel --name=%s failed: %s", ref.job_id, name, exc)
                return
            if done.returncode != 0:
                log.warning("job %s: scancel --name=%s: %s", ref.job_id, name, first_line(done.stderr))
        self._next_poll = 0.0

    def graceful_stop(self, ref: AttemptRef) -> None:
        # SIGTERM to the ranks (the job steps, not the batch shell, which writes the end record):
        # each saves a checkpoint and exits. A job still in the queue is simply cancelled.
        if ref.state.get("hold") and self._withdraw_step(ref):
            return
        step = ref.state.get("slurm_step_id") if ref.state.get("hold") else None
        if step and self._scancel(ref, "--signal=TERM", step=str(step)):
            return  # the step alone: a standby step beside it waits on for the restart
        if phase_of(ref.state.get("state")) is Phase.PENDING or not self._scancel(ref, "--signal=TERM"):
            self._scancel(ref)

    def request_checkpoint(self, ref: AttemptRef) -> bool:
        return self._scancel(ref, "--signal=USR1")  # SIGUSR1: save at the next step and go on

    def dump_stacks(self, ref: AttemptRef, timeout_s: float) -> list[Path]:
        stacks = ref.attempt_dir / "stacks.txt"
        before = mtime(stacks)
        if not self._scancel(ref, "--signal=USR2"):  # faulthandler in every rank
            return []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if mtime(stacks) not in (None, before):
                return [stacks]
            time.sleep(0.2)
        return []

    def kill(self, ref: AttemptRef) -> list[int]:
        """SIGKILL every process of the attempt, then cancel its allocation (no pids: they live on other nodes).

        A step of a held allocation: SIGKILL to its steps only; the allocation stays for the next attempt
        (``release`` gives it back when the job ends).
        """
        if ref.state.get("hold") and ref.state.get("slurm_job_id") and phase_of(ref.state.get("state")) \
                is not Phase.PENDING:
            self._kill_step(ref)
            return []
        if not ref.state.get("slurm_job_id"):
            # The launch was interrupted before sbatch's answer was recorded: whatever was submitted is
            # found by the job's name (this supervisor job has no other live allocation: launch refuses one).
            self._scancel_by_name(ref)
            return []
        self._scancel(ref, "--signal=KILL", "--full")
        self._scancel(ref)
        return []

    def clean_orphans(self, gpus: Sequence[int], earlier: Sequence[AttemptRef]) -> OrphanCheck:
        return OrphanCheck(ok=True)  # Slurm's nodes are Slurm's to clean (its epilog), not this node's GPUs

    def forget(self, job_id: str) -> None:
        self._followed.pop(job_id, None)

    def tick(self) -> None:
        """Poll the queue (gently) and wake the loop for every followed job whose Slurm state changed."""
        self._tick_standbys()
        if not self._followed or not self._refresh():
            return
        for job_id, (slurm_job_id, last, end_record) in list(self._followed.items()):
            entry = self._queue.get(slurm_job_id)
            now_state = entry.state if entry is not None else None
            if end_record is not None and exists(end_record):  # a held allocation's step ended
                self._followed[job_id] = (slurm_job_id, now_state, None)
                self._notify(RunnerNotice(job_id, "ended"))
            elif now_state != last:
                self._followed[job_id] = (slurm_job_id, now_state, end_record)
                self._notify(RunnerNotice(job_id, "ended" if phase_of(now_state) in (Phase.ENDED, None)
                                          else "progress"))

    def close(self) -> None:
        self._followed.clear()
