"""A standby per node on Slurm: the next attempt's ranks, prepared inside the held allocation (docs/slurm.md).

The daemon decides, the batch script acts (``slurm_script``): while attempt ``n`` runs as
a step of a held allocation (and has made its first step; ``core.standby_keeping`` says
when), ``prepare`` writes ``alloc/standby.sh`` (``render_standby_request``: attempt
``n + 1``'s dir, the nodes of the running step, ``python -m trainer ... --standby`` and the
attempt's variables). The script runs it as a **step of its own**, ``srun --overlap``
beside the training step: on every node each rank of the next attempt imports torch,
Lightning and the user's modules, builds the model and data, says ready
(``standby-ready.rank<R>.json``) and waits for ``handover.json``, holding no GPU context and
no port. At the restart ``promote`` checks every rank said ready and its step still runs,
then launches the attempt inside the allocation as usual with ``STEP_STANDBY`` in the
next-step file and the handover beside it (``handover.pending.json``: the cold attempt's
argv, with the checkpoint the daemon chose, and its ``ML_SUPERVISOR_*`` variables; one file
for every rank, so a DDP rank set resumes from one checkpoint). The script renames the
handover into place and records the standby's step as the attempt's step: the ranks that
were waiting are the training step, so ``srun --kill-on-bad-exit``, ``scancel`` of the step,
the time limit's signals and the end record work on it as on a cold step.

Anything else starts cold, which is correct, only slower: no standby yet, a rank not ready
or dead (``--kill-on-bad-exit`` ends its whole step), other nodes chosen for the next step
(a spare), a new allocation. The script ends a standby step no attempt takes before it
starts a cold step and when it gives the allocation back; Slurm ends every step with the
allocation. Standbys live in the runner's memory only, as the local ones do.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.jobfiles.atomic import read_json
from supervisor.jobfiles.deadline import FileStalled
from supervisor.jobfiles.standbyfiles import ready_file_name
from supervisor.runners.base import AttemptSpec, Phase, RunnerState
from supervisor.runners.slurm_alloc import Allocation, options_of, read_allocation, write_atomically
from supervisor.runners.slurm_held import run_command
from supervisor.runners.slurm_script import GONE, STANDBY_END, STANDBY_RECORD, STANDBY_REQUEST
from supervisor.runners.slurm_states import QueueEntry, phase_of
from supervisor.runners.standby_process import STANDBY_ENV

log = logging.getLogger("ml_supervisor")


@dataclass
class SlurmStandby:
    """The job's standby step, asked of the batch script of its held allocation."""

    attempt: int
    attempt_dir: Path
    alloc_dir: Path
    slurm_job_id: str
    nodes: tuple[str, ...]  # the nodes it runs on: the next step must run there to take it over
    world_size: int


@dataclass(frozen=True)
class StandbyHandover:
    """What ``_launch_inside`` needs to hand the next step to a standby step."""

    step_id: str
    nodes: tuple[str, ...]
    handover: str  # the JSON of ``handover.json``


def render_standby_request(attempt_dir: Path, nodes: Sequence[str], command: Sequence[str],
                           env: Mapping[str, str], job_id: str) -> str:
    """``alloc/standby.sh``, sourced by the batch script (pure): the standby step's dir, nodes, variables, command.

    Its variables are the attempt's ``ML_SUPERVISOR_*`` ones (the rest is the allocation's, as for a
    step), the standby marker, and the NVML check that keeps ``torch.cuda.is_available()`` from
    initialising CUDA before the handover.
    """
    q = shlex.quote
    exports = {k: v for k, v in env.items() if k.startswith("ML_SUPERVISOR_")}
    exports[STANDBY_ENV] = job_id
    exports["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    return "\n".join([
        f"SB_DIR={q(str(attempt_dir))}",
        f"SB_NODES={q(','.join(nodes))}",
        "SB_ENV=(" + " ".join(q(f"{k}={v}") for k, v in sorted(exports.items())) + ")",
        "SB_CMD=(" + " ".join(q(c) for c in [*command, "--standby"]) + ")",
    ]) + "\n"


def handover_json(spec: AttemptSpec) -> str:
    """The handover every rank of the standby step reads (pure): the cold attempt's argv and variables.

    No lock (no monitor holds one on Slurm: the script runs one step at a time) and no port
    (Lightning's SLURM environment derives it from the job id, as for a cold step).
    """
    env = {k: v for k, v in spec.env.items() if k.startswith("ML_SUPERVISOR_")}
    return json.dumps({"argv": list(spec.command[3:]), "env": env, "lock_path": "", "master_port": None,
                       "written_at": time.time()}) + "\n"


def standby_problem(attempt_dir: Path, world_size: int) -> str | None:
    """Why the standby step in ``attempt_dir`` cannot take the attempt now, or None (every rank ready)."""
    try:
        if standby_end(attempt_dir) is not None:
            return "its step ended"
        if standby_step_id(attempt_dir) is None:
            return "the batch script has not started it yet"
        for rank in range(world_size):
            ready = read_json(attempt_dir / ready_file_name(rank, world_size))
            if not isinstance(ready, dict):
                return f"rank {rank} is still preparing"
            if ready.get("failed"):
                return f"rank {rank} could not prepare: {ready['failed']}"
    except FileStalled:
        return "the shared filesystem does not answer"
    return None


def standby_step_id(attempt_dir: Path) -> str | None:
    """The Slurm step id the script recorded for the standby step in ``attempt_dir``."""
    try:
        started = read_json(attempt_dir / STANDBY_RECORD)
    except FileStalled:
        return None
    return str(started.get("slurm_step_id") or "") or None if isinstance(started, dict) else None


def standby_end(attempt_dir: Path) -> dict[str, Any] | None:
    """The end record of the standby step now recorded in ``attempt_dir`` (an earlier step's does not count)."""
    ended = read_json(attempt_dir / STANDBY_END)
    step = standby_step_id(attempt_dir)
    return ended if isinstance(ended, dict) and step is not None and str(ended.get("slurm_step_id")) == step else None


class SlurmStandbys:
    """The standby half of the Slurm runner (``base.StandbyRunner``; its other state lives in ``SlurmRunner``)."""

    _queue: dict[str, QueueEntry]
    _standbys: dict[str, SlurmStandby]
    _failed_standbys: dict[tuple[str, int], int]

    if TYPE_CHECKING:  # SlurmRunner's and HeldAllocations'
        def _refresh(self, *, force: bool = False) -> bool: ...
        def _hostnames(self, nodelist: str) -> list[str]: ...
        def _launch_inside(self, spec: AttemptSpec, slurm: Mapping[str, Any], previous: Allocation,
                           standby: StandbyHandover | None = None) -> RunnerState | None: ...

    def prepare(self, spec: AttemptSpec) -> RunnerState:
        """Ask the held allocation's script for attempt ``spec.attempt``'s standby step; {} when none can help.

        Only where the next attempt would run inside the allocation: it runs, is held, has restarts left.
        """
        self.drop_standby(spec.job_id)
        slurm: Mapping[str, Any] = spec.options.get("slurm") or {}
        nodes, _, limit = options_of(slurm)
        previous = read_allocation(spec.attempt_dir)
        if previous is None or limit <= 0 or previous.restarts >= limit:
            return {}
        entry = self._queue.get(previous.slurm_job_id)
        alloc_dir = Path(previous.alloc_dir)
        if entry is None or phase_of(entry.state) is not Phase.RUNNING or (alloc_dir / GONE).exists():
            return {}
        allocation = self._hostnames(entry.nodes)
        running_on = tuple(previous.nodes or allocation[:nodes])
        if len(running_on) != nodes:
            return {}
        if spec.attempt_dir.exists():  # left by an earlier standby: a fresh dir for the fresh one
            shutil.rmtree(spec.attempt_dir, ignore_errors=True)
        spec.attempt_dir.mkdir(parents=True, exist_ok=True)
        # No spares: the step runs on every node of the allocation (Slurm's choice, as the next step's).
        named = running_on if len(allocation) > nodes else ()
        write_atomically(alloc_dir / STANDBY_REQUEST, render_standby_request(
            spec.attempt_dir, named, spec.command, spec.env, spec.job_id))
        self._standbys[spec.job_id] = SlurmStandby(spec.attempt, spec.attempt_dir, alloc_dir, previous.slurm_job_id,
                                                   running_on, spec.ranks.world_size)
        log.info("job %s: standby step for attempt %d asked of allocation %s (on %s)", spec.job_id, spec.attempt,
                 previous.slurm_job_id, ",".join(running_on))
        return {"standby": True, "slurm_job_id": previous.slurm_job_id}

    def promote(self, job_id: str, spec: AttemptSpec) -> RunnerState | None:
        """Launch ``spec`` inside the allocation on its standby step; None when the job has none usable."""
        standby = self._standbys.get(job_id)
        if standby is None:
            return None
        why = (f"it was prepared for attempt {standby.attempt}" if standby.attempt != spec.attempt
               or standby.attempt_dir != spec.attempt_dir else standby_problem(standby.attempt_dir, standby.world_size))
        previous = read_allocation(spec.attempt_dir)
        if why is None and (previous is None or previous.slurm_job_id != standby.slurm_job_id):
            why = "the job is in another allocation now"
        step_id = standby_step_id(standby.attempt_dir)
        if why is not None or previous is None or step_id is None:
            log.info("job %s: not promoting the standby step: %s", job_id, why)
            self.drop_standby(job_id)
            return None
        if not self._refresh(force=True):
            return None  # the launch refuses too (squeue does not answer); the standby waits
        del self._standbys[job_id]
        slurm: Mapping[str, Any] = spec.options.get("slurm") or {}
        return self._launch_inside(spec, slurm, previous, StandbyHandover(step_id, standby.nodes, handover_json(spec)))

    def has_standby(self, job_id: str) -> bool:
        """Whether the job has a standby step, asked for or running."""
        return job_id in self._standbys

    def serve_pending(self, job_id: str) -> None:
        """Nothing waits here: the script starts a standby step at its next poll."""

    def failed_prepares(self, job_id: str, attempt: int) -> int:
        """Standby steps for ``attempt`` of the job that ended before every rank was ready."""
        return self._failed_standbys.get((job_id, attempt), 0)

    def drop_standby(self, job_id: str) -> None:
        """Withdraw the job's standby request, or end its standby step (the script records its end)."""
        standby = self._standbys.pop(job_id, None)
        if standby is None:
            return
        try:
            os.unlink(standby.alloc_dir / STANDBY_REQUEST)
            return  # not taken yet: no step was started
        except OSError:
            pass
        step = standby_step_id(standby.attempt_dir)
        if step is None:
            return  # being started this very moment: the script ends it before any cold step, and as it leaves
        try:
            run_command(["scancel", "--signal=KILL", f"{standby.slurm_job_id}.{step}"])
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("job %s: cannot end the standby step %s.%s: %s", job_id, standby.slurm_job_id, step, exc)

    def forget_job(self, job_id: str) -> None:
        """The job ended for good: no standby for it (the allocation's release ends its step too)."""
        self.drop_standby(job_id)
        for key in [k for k in self._failed_standbys if k[0] == job_id]:
            del self._failed_standbys[key]

    def _tick_standbys(self) -> None:
        """Forget standby steps that ended untaken (replaced at the next poll); count those never ready."""
        for job_id, standby in list(self._standbys.items()):
            try:
                ended = standby_end(standby.attempt_dir)
            except FileStalled:
                continue
            if ended is None:
                continue
            del self._standbys[job_id]
            if not all_ready(standby):
                key = (job_id, standby.attempt)
                self._failed_standbys[key] = self._failed_standbys.get(key, 0) + 1
            log.info("job %s: the standby step for attempt %d ended untaken (%s)", job_id, standby.attempt, ended)


def all_ready(standby: SlurmStandby) -> bool:
    """Whether every rank of the standby said ready (none could not prepare)."""
    for rank in range(standby.world_size):
        try:
            ready = read_json(standby.attempt_dir / ready_file_name(rank, standby.world_size))
        except FileStalled:
            return False
        if not isinstance(ready, dict) or ready.get("failed"):
            return False
    return True
