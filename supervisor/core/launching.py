"""Launching an attempt: GPUs, the resume choice, the ``AttemptSpec`` (a pure function), the runner.

``attempt_spec`` is the whole of "what to run": job + config + attempt number
+ resume choice (+ the few facts of the node) -> ``AttemptSpec``, no I/O. The
``Launching`` part of the core gathers those facts, records the attempt (before
anything starts: see ``Launching.launch``) and hands the spec to the runner.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from supervisor.access import RunAs, run_as_for
from supervisor.core.corebase import CoreBase
from supervisor.core.rank_files import job_world_size
from supervisor.core.submit import trainer_environment
from supervisor.core.timers import TimerKind
from supervisor.gpu import allocate, cuda_environment
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import live_checkpoints
from supervisor.rules.causes import EventKind
from supervisor.rules.resume import ResumeChoice, choose_resume
from supervisor.rules.states import LIVE_STATES, JobState
from supervisor.runners.base import OWN_ENV_KEY, AttemptSpec, LaunchRefused, RankLayout, RunnerState
from supervisor.store import AttemptRow, JobRow

log = logging.getLogger("ml_supervisor")

# The monitor reports the trainer's pid within milliseconds: look again this soon rather than at the tick.
STARTED_CHECK_S = 0.2
LAUNCH_FAILED_RETRY_S = 10.0


def attempt_spec(job: JobRow, cfg: DictConfig, n: int, resume: ResumeChoice, *, gpus: Sequence[int],
                 first_started_at: float, trainer_module: str, boot_id: str, state_dir: Path,
                 base_env: Mapping[str, str], run_as: RunAs | None = None) -> AttemptSpec:
    """What attempt ``n`` of ``job`` runs (pure: everything it depends on is an argument)."""
    jl = JobLayout(Path(job.job_dir))
    command = [str(cfg.python), "-m", trainer_module, "--config", str(jl.config),
               "--attempt-dir", str(jl.attempt(n).dir), "--checkpoint-dir", str(jl.checkpoints),
               "--attempt", str(n), "--restarts", str(job.restarts)]
    if resume.path:
        command += ["--ckpt", resume.path]
    deadline = None if job.budget_s is None else first_started_at + job.budget_s
    if deadline is not None:
        command += ["--deadline", f"{deadline:.3f}"]
    # The owner's HOME/USER/LOGNAME first: the config's own `env` may still set them.
    env = trainer_environment(cfg, Path(job.workdir), run_as.environment(base_env) if run_as else dict(base_env))
    env.update({"ML_SUPERVISOR_JOB_ID": job.id, "ML_SUPERVISOR_ATTEMPT": str(n),
                "ML_SUPERVISOR_RESTARTS": str(job.restarts), "ML_SUPERVISOR_BOOT_ID": boot_id})
    env[OWN_ENV_KEY] = str(state_dir)  # also marks our processes for the GPU pre-flight
    # CUDA numbers GPUs like NVML only in PCI order; an empty list keeps a CPU job off every GPU.
    env.update(cuda_environment(list(gpus)))
    # DDP: one process per device, started by the runner; on Slurm, srun starts ntasks_per_node x nodes
    local = job_world_size(cfg)
    ranks, options = RankLayout(local, tuple(range(local))), {}
    if str(cfg.supervision.backend) == "slurm":
        slurm = OmegaConf.to_container(cfg.slurm, resolve=True)
        assert isinstance(slurm, dict)
        per_node = int(slurm["ntasks_per_node"])
        ranks = RankLayout(world_size=per_node * int(slurm["nodes"]), local_ranks=tuple(range(per_node)))
        options = {"slurm": slurm}
    return AttemptSpec(job_id=job.id, attempt=n, command=tuple(command), env=env, workdir=job.workdir,
                       attempt_dir=jl.attempt(n).dir, lock_path=jl.lock, gpus=tuple(gpus), resume_from=resume.path,
                       deadline=deadline, ranks=ranks, options=options, run_as=run_as)


class Launching(CoreBase):
    """Start the next attempt of a queued or backed-off job."""

    def launch(self, job: JobRow, now: float) -> None:
        store = self._store()
        last = store.last_attempt(job.id)
        if last is not None and last.live:
            # An earlier launch of this job raised past its own handling: its row is live and it may have
            # started. End it first, by identity, as reconcile does after a daemon crash (never two trainers).
            self.end_interrupted_launch(job, last, now)
            return
        cfg = self.job_config(job)
        jl = JobLayout(Path(job.job_dir))
        gpus = self.allocate_gpus(job, cfg, now)
        if gpus is None:
            return
        choice = choose_resume(live_checkpoints(jl.manifest), str(cfg.supervision.resume_from))
        for path, why in choice.skipped:
            store.add_event(job.id, EventKind.CHECKPOINT_REJECTED, f"not resuming from {path}: {why}", now=now,
                            data={"path": path, "why": why})
        n = (last.n if last else 0) + 1
        first_started_at = job.first_started_at or now
        try:
            run_as = run_as_for(job.owner_uid)
        except LookupError as exc:  # the owner was removed: nobody to run it as, never root instead
            self._launch_failed(job, n, str(exc), now)
            return
        spec = attempt_spec(job, cfg, n, choice, gpus=gpus, first_started_at=first_started_at,
                            trainer_module=self.settings.trainer_module, boot_id=self.boot_id,
                            state_dir=self.state_dir, base_env=os.environ, run_as=run_as)
        runner = self.runner_for_backend(str(cfg.supervision.backend))
        # Record first: the row exists (runner state empty: "maybe started") before any process does, so a
        # daemon killed at any moment leaves a next daemon that knows this attempt (reconcile kills what may
        # run of it and numbers the next attempt after it) rather than an orphan no row names.
        store.insert_attempt(AttemptRow(job_id=job.id, n=n, started_at=now, runner_kind=runner.kind,
                                        boot_id=self.boot_id, gpus=list(gpus), resumed_from=choice.path))
        try:
            # A standby (imports done, model built) takes a local attempt when it has one; else a cold start.
            state = self.promote_standby(spec) if runner is self.runner else None
            if state is None:
                state = runner.launch(spec)
        except LaunchRefused as refused:
            store.delete_attempt(job.id, n)  # refused: nothing was started, the number is free again
            if refused.retry:
                store.update_job(job.id, now=now, wait_reason=refused.reason)
                log.warning("job %s: not launching attempt %d: %s", job.id, n, refused.reason)
                return
            self._launch_failed(job, n, refused.reason, now)
            return
        except OSError as exc:
            store.delete_attempt(job.id, n)  # the spawn (or sbatch) itself failed: nothing runs
            self._launch_failed(job, n, str(exc), now)
            return
        store.update_attempt(job.id, n, runner_state=state)
        resumed = f"from {Path(choice.path).name} ({choice.rule})" if choice.path else "from scratch"
        job = store.transition(job.id, JobState.STARTING, now=now, attempt=n, kind=EventKind.LAUNCH,
                               message=f"attempt {n} starting {resumed}",
                               data={"resumed_from": choice.path, "rule": choice.rule, "gpus": gpus},
                               first_started_at=first_started_at, next_start_at=None, wait_reason=None,
                               stop_intent=None, stop_deadline=None)
        self.follow(job, n)
        self.timers.schedule(job.id, TimerKind.STARTED, now + STARTED_CHECK_S)
        self.schedule_timers(job)
        log.info("job %s: attempt %d started %s", job.id, n, resumed)

    def promote_standby(self, spec: AttemptSpec) -> RunnerState | None:
        """Overridden by ``StandbyKeeping``: no standby, a cold start."""
        return None

    def _launch_failed(self, job: JobRow, n: int, why: str, now: float) -> None:
        store = self._store()
        store.add_event(job.id, EventKind.LAUNCH_FAILED, f"cannot start attempt {n}: {why}", now=now)
        retry_at = now + LAUNCH_FAILED_RETRY_S
        if job.state is JobState.BACKOFF:  # a relaunch failed: wait again (backoff -> backoff is no transition)
            store.update_job(job.id, now=now, next_start_at=retry_at, detail=f"launch failed: {why}")
        else:
            store.transition(job.id, JobState.BACKOFF, now=now, message=f"launch failed: {why}",
                             next_start_at=retry_at)
        self.timers.schedule(job.id, TimerKind.BACKOFF, retry_at)

    def follow(self, job: JobRow, n: int) -> None:
        """Follow a live attempt (launched or adopted): its new checkpoints and its hang clock."""
        jl = JobLayout(Path(job.job_dir))
        # checkpoints saved before now are not news: events start from the manifest's current end
        self.tracker.track(job.id, n, manifest_offset=_size(jl.manifest))
        if self._checkpoints is not None:
            self._checkpoints.watch(job.id, jl.checkpoints)

    def schedule_timers(self, job: JobRow) -> None:
        """(Re)arm the job's timers from its row: budget, backoff end, stop escalation."""
        deadline = self.deadline(job, job.first_started_at)
        if deadline is not None:
            self.timers.schedule(job.id, TimerKind.BUDGET, deadline)
        if job.state is JobState.BACKOFF and job.next_start_at:
            self.timers.schedule(job.id, TimerKind.BACKOFF, job.next_start_at)
        if job.state is JobState.STOPPING and job.stop_deadline:
            self.timers.schedule(job.id, TimerKind.ESCALATE, job.stop_deadline)

    def allocate_gpus(self, job: JobRow, cfg: DictConfig, now: float) -> list[int] | None:
        """Healthy, free, clean GPUs for the next attempt ([] for a CPU job); None keeps the job queued."""
        n = job.gpus_requested
        if n == 0:
            return []
        if self.gpus is None:
            self.wait(job, now, "no NVML on this node: GPU jobs cannot be placed")
            return None
        busy = self.gpu_jobs()
        gpus = allocate(n, self.gpus.allocatable(), busy)
        if gpus is None:
            free = [g for g in self.gpus.allocatable() if g not in busy]
            self.wait(job, now, f"waiting for {n} free healthy GPU{'s' if n > 1 else ''} "
                                f"({len(free)} of {self.gpus.count()} free)")
            return None
        earlier = [self.attempt_ref(job, a) for a in self._store().attempts(job.id)]
        # Short wait inside the loop; a job still blocked is retried at the next tick.
        check = self.runner.clean_orphans(gpus, earlier)
        if check.killed:
            self._store().add_event(job.id, EventKind.PREFLIGHT, f"killed {len(check.killed)} orphan(s) of earlier "
                                    f"attempts on GPU {','.join(map(str, gpus))}", now=now,
                                    data={"pids": list(check.killed)})
        if not check.ok:
            self.wait(job, now, check.reason)
            return None
        return gpus

    def gpu_jobs(self) -> dict[int, str]:
        """GPU index -> id of the job whose live attempt holds it."""
        store = self._store()
        busy: dict[int, str] = {}
        for job in store.list_jobs(states=list(LIVE_STATES)):
            attempt = store.last_attempt(job.id)
            if attempt is not None and attempt.live:
                busy.update({g: job.id for g in attempt.gpus})
        return busy

    def wait(self, job: JobRow, now: float, reason: str) -> None:
        """Keep (or put) the job in ``queued`` with a reason people can read."""
        store = self._store()
        if job.state is JobState.QUEUED:
            if job.wait_reason != reason:
                store.update_job(job.id, now=now, wait_reason=reason)
                store.add_event(job.id, EventKind.WAITING, reason, now=now)
        else:
            store.transition(job.id, JobState.QUEUED, now=now, message=reason, kind=EventKind.WAITING,
                             wait_reason=reason)

    def wake_queued(self) -> None:
        for job in self._store().list_jobs(states=[JobState.QUEUED]):
            self.wake_job(job.id)


def _size(path: Path) -> int:
    """The size of a file, 0 when it does not exist (yet)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0
