"""Restarts inside a held Slurm allocation: the runner's side (a mixin of ``slurm.SlurmRunner``).

The next attempt as a new step of the allocation (``_launch_inside``), an attempt that
is one step (``_observe_step``: it ends with its own end record), the kill of one step
(never the allocation), a step withdrawn before the script took it, and ``release``
(the job ended: the script exits and gives the allocation back). The files and the pure
choices are ``slurm_alloc``'s; the batch script's side is ``slurm_script``'s.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.jobfiles.atomic import read_json
from supervisor.jobfiles.deadline import FileStalled
from supervisor.jobfiles.safe_read import lstat
from supervisor.runners.base import AttemptRef, AttemptSpec, Observation, Phase, RunnerState
from supervisor.runners.slurm_alloc import (
    Allocation,
    bad_nodes,
    choose_step_nodes,
    launch_note,
    node_events,
    options_of,
    render_next_step,
    write_allocation,
    write_atomically,
)
from supervisor.runners.slurm_health import HEALTH_STEP, health_exit, leave_out, step_faults
from supervisor.runners.slurm_script import END_RECORD, GONE, HANDOVER_PENDING, NEXT_STEP, RELEASE, STEP_RECORD
from supervisor.runners.slurm_states import QueueEntry, end_exit, phase_of

if TYPE_CHECKING:
    from supervisor.runners.slurm_standby import StandbyHandover

log = logging.getLogger("ml_supervisor")

COMMAND_TIMEOUT_S = 30.0


def run_command(argv: list[str], env: Mapping[str, str] | None = None,
                cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """A Slurm client command (``sbatch``, ``squeue``, ``scancel``...), its output captured, bounded in time."""
    return subprocess.run(argv, env=None if env is None else dict(env), cwd=cwd, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S, check=False)


def first_line(text: str) -> str:
    """The first non-blank line of a command's output (what a one-line log says of it)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


class HeldAllocations:
    """The held-allocation half of the Slurm runner (its state lives in the runner: see ``SlurmRunner``)."""

    _queue: dict[str, QueueEntry]
    _followed: dict[str, tuple[str, str | None, Path | None]]
    _alloc_dirs: dict[str, Path]
    _next_poll: float

    def _launch_inside(self, spec: AttemptSpec, slurm: Mapping[str, Any], previous: Allocation,
                       standby: StandbyHandover | None = None) -> RunnerState | None:
        """Start the attempt as the next step of the held allocation; None when it must go to a new one.

        Releases the allocation (the script exits) when it has no restart left or too few good nodes.
        ``standby``: the attempt's standby step, which takes the step over when it runs on the chosen nodes.
        """
        nodes, _, limit = options_of(slurm)
        per_node = int(slurm.get("ntasks_per_node") or 1)
        entry = self._queue.get(previous.slurm_job_id)
        alloc_dir = Path(previous.alloc_dir)
        if (limit <= 0 or entry is None or phase_of(entry.state) is not Phase.RUNNING
                or entry.state.upper().startswith("COMPLETING") or exists(alloc_dir / GONE)):
            return None  # the allocation ended (time limit, cancel, node failure) or is not held
        allocation = self._hostnames(entry.nodes)
        # Slurm's word (DOWN, DRAIN), then the daemon's own findings on the last step (slurm_health).
        last_step = [n for n in allocation if n in (previous.nodes or allocation[:nodes])]
        found = step_faults(spec.attempt_dir.parent / str(spec.attempt - 1), last_step, per_node,
                            spec.ranks.world_size)
        faulty = {**previous.faulty, **found}
        if previous.restarts >= limit:  # the next allocation leaves out what this one found bad
            write_allocation(spec.attempt_dir, replace(previous, faulty=faulty))
            self._release(spec.job_id, alloc_dir, f"{previous.restarts} restarts inside it, the most "
                          "slurm.in_allocation_restarts allows")
            return None
        bad = leave_out({n: why for n, why in self._bad_nodes(entry.nodes).items() if n in allocation}, found,
                        previous.faulty)
        chosen = choose_step_nodes(allocation, previous.nodes, bad, nodes)
        excluded = sorted(set(previous.excluded) | set(bad))
        if not chosen.nodes:
            write_allocation(spec.attempt_dir, replace(previous, excluded=excluded, faulty=faulty))
            self._release(spec.job_id, alloc_dir, f"too few good nodes left ({', '.join(sorted(bad))} bad)")
            return None
        spec.attempt_dir.mkdir(parents=True, exist_ok=True)
        # No spares: every node of the allocation, as its first step (Slurm's choice); else the chosen ones.
        step_nodes = list(chosen.nodes) if len(allocation) > nodes else []
        # The standby step takes the attempt over only on the nodes it waits on.
        taking = standby if standby is not None and tuple(chosen.nodes) == standby.nodes else None
        if taking is not None:  # renamed into place by the script as the step starts
            write_atomically(spec.attempt_dir / HANDOVER_PENDING, taking.handover)
        write_atomically(alloc_dir / NEXT_STEP, render_next_step(spec.attempt_dir, step_nodes, spec.command, spec.env,
                                                                 taking.step_id if taking is not None else None))
        write_allocation(spec.attempt_dir, replace(previous, restarts=previous.restarts + 1, nodes=list(chosen.nodes),
                                                   excluded=excluded, faulty=faulty))
        self._alloc_dirs[spec.job_id] = alloc_dir
        self._followed[spec.job_id] = (previous.slurm_job_id, entry.state, spec.attempt_dir / END_RECORD)
        note = launch_note(previous.slurm_job_id, chosen, bad)
        log.info("job %s: attempt %d restarted %s%s", spec.job_id, spec.attempt, note,
                 ", on its standby step" if taking is not None else "")
        return {"slurm_job_id": previous.slurm_job_id, "state": entry.state, "nodes": "",
                "nodes_expected": spec.ranks.nodes, "hold": True, "probed": True,
                "in_allocation": previous.restarts + 1, "alloc_dir": str(alloc_dir),
                "step_nodes": ",".join(chosen.nodes), "excluded": list(chosen.excluded),
                "spares": list(chosen.spares), "launch_note": note, "node_events": node_events(chosen, bad),
                "standby": taking is not None}

    def _hostnames(self, nodelist: str) -> list[str]:
        """Slurm's node list (``n[1-3]``) as names, in order; [] when scontrol cannot say."""
        try:
            done = run_command(["scontrol", "show", "hostnames", nodelist])
        except (OSError, subprocess.SubprocessError):
            return []
        return done.stdout.split() if done.returncode == 0 else []

    def _bad_nodes(self, nodelist: str) -> dict[str, str]:
        """The nodes of ``nodelist`` Slurm shows DOWN, DRAIN(ING), FAIL(ING), with why (none when sinfo cannot say)."""
        try:
            done = run_command(["sinfo", "-h", "-N", "-n", nodelist, "-o", "%N %t"])
        except (OSError, subprocess.SubprocessError):
            return {}
        return bad_nodes(done.stdout) if done.returncode == 0 else {}

    def _release(self, job_id: str, alloc_dir: Path, why: str) -> None:
        """Tell the held allocation's script to exit (it gives the allocation back)."""
        try:
            (alloc_dir / RELEASE).touch()
        except OSError as exc:
            log.warning("job %s: cannot release the allocation in %s: %s", job_id, alloc_dir, exc)
            return
        self._next_poll = 0.0
        log.info("job %s: giving the allocation back: %s", job_id, why)

    def release(self, job_id: str) -> None:
        """The job ended for good: give its held allocation back (the script exits; nothing is cancelled)."""
        alloc_dir = self._alloc_dirs.pop(job_id, None)
        if alloc_dir is not None and not exists(alloc_dir / GONE):
            self._release(job_id, alloc_dir, "the job ended")

    def _observe_step(self, ref: AttemptRef, state: RunnerState, phase: Phase, last_phase: Phase) -> Observation:
        """An attempt that is one step of a held allocation: it ends with its step (its own end record).

        Pending until its step starts (the allocation queued, or the script not yet at it); an end record
        written because the allocation itself is ending (SIGTERM: time limit, cancel) waits for Slurm's
        terminal state, which says why.
        """
        try:
            started = read_json(ref.attempt_dir / STEP_RECORD)
            record = read_json(ref.attempt_dir / END_RECORD)
        except FileStalled:  # the shared filesystem does not answer: nothing is known to have changed yet
            return Observation(last_phase, dict(ref.state))
        if isinstance(started, dict):
            state["slurm_step_id"] = str(started.get("slurm_step_id") or "")
            state["nodes"] = str(started.get("nodes") or state.get("nodes") or "")
            state["standby"] = started.get("standby") is True  # the script ran it on the standby's step
        allocation_state = state.get("state")
        if isinstance(record, dict):
            ending = "TERM" in str(record.get("signals") or "")
            if ending and phase is not Phase.ENDED:
                return Observation(Phase.RUNNING, state)
            code = record.get("exit_code")
            state["allocation_state"] = allocation_state
            state["state"] = allocation_state if ending else ("COMPLETED" if code == 0 else "FAILED")
            ended = end_exit(record, str(state["state"]), now=time.time())
            if record.get("step") == HEALTH_STEP:  # the health probe ended it before its ranks started
                ended = health_exit(ref.attempt_dir, str(state.get("step_nodes") or "").split(","), ended)
            self._followed.pop(ref.job_id, None)
            return Observation(Phase.ENDED, state, ended)
        if phase is Phase.ENDED:  # the allocation ended before this step wrote its end record (or started)
            self._followed.pop(ref.job_id, None)
            ended_state = allocation_state if phase_of(allocation_state) is Phase.ENDED else None
            return Observation(Phase.ENDED, state, end_exit(None, ended_state, now=time.time()))
        return Observation(Phase.RUNNING if isinstance(started, dict) else Phase.PENDING, state)

    def _withdraw_step(self, ref: AttemptRef) -> bool:
        """A held allocation's step the script has not started yet: take its next-step file back, end it here.

        True when the step was withdrawn (it never runs); False when it has started (or is not a step).
        """
        alloc = ref.state.get("alloc_dir")
        if not alloc or exists(ref.attempt_dir / STEP_RECORD):
            return False
        try:
            os.rename(Path(str(alloc)) / NEXT_STEP, ref.attempt_dir / "slurm-withdrawn.sh")
        except OSError:
            return False  # the script took it: the step runs (or ran); signal it as any other
        write_atomically(ref.attempt_dir / END_RECORD, json.dumps(
            {"slurm_job_id": ref.state.get("slurm_job_id"), "exit_code": None, "step": "withdrawn",
             "signals": "", "ended_at": time.time()}) + "\n")
        return True

    def _kill_step(self, ref: AttemptRef) -> None:
        """SIGKILL the attempt's step (``<job>.<step>``), never the batch shell that holds the allocation."""
        if self._withdraw_step(ref):
            return
        step = ref.state.get("slurm_step_id")
        if not step:
            try:
                started = read_json(ref.attempt_dir / STEP_RECORD)
            except FileStalled:
                started = None
            step = started.get("slurm_step_id") if isinstance(started, dict) else None
        target = f"{ref.state.get('slurm_job_id')}" + (f".{step}" if step else "")  # no step known: every step
        try:
            done = run_command(["scancel", "--signal=KILL", target])
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("job %s: scancel --signal=KILL %s failed: %s", ref.job_id, target, exc)
            return
        if done.returncode != 0:
            log.warning("job %s: scancel --signal=KILL %s: %s", ref.job_id, target, first_line(done.stderr))
        self._next_poll = 0.0


def exists(path: Path) -> bool:
    """Whether ``path`` exists (not through a link); False when the filesystem does not answer."""
    return mtime(path) is not None


def mtime(path: Path) -> float | None:
    """``path``'s mtime (not through a link); None when missing or when the filesystem does not answer."""
    try:
        info = lstat(path)
    except OSError:
        return None
    return info.st_mtime if info is not None else None
