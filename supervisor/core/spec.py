"""``attempt_spec``: the whole of "what to run" for one attempt, as a pure function (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig

from supervisor.access import RunAs
from supervisor.core.submit import trainer_environment
from supervisor.gpu import cuda_environment
from supervisor.jobfiles.layout import JobLayout
from supervisor.rules.elastic import ElasticPlan
from supervisor.rules.resume import ResumeChoice
from supervisor.rules.rollback import Rollback
from supervisor.runners.backend import Backend
from supervisor.runners.base import OWN_ENV_KEY, AttemptSpec, RankLayout
from supervisor.store import JobRow


def attempt_spec(job: JobRow, cfg: DictConfig, n: int, resume: ResumeChoice, *, backend: Backend,
                 gpus: Sequence[int], first_started_at: float, trainer_module: str, boot_id: str, state_dir: Path,
                 base_env: Mapping[str, str], run_as: RunAs | None = None,
                 rollback: Rollback | None = None, checkpoint_every: int | None = None,
                 elastic: ElasticPlan | None = None) -> AttemptSpec:
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
    if rollback is not None:  # after a divergence: drop the batches that followed, scale the rates
        command += rollback.trainer_args()
    if checkpoint_every is not None:  # checkpoint.every_n_train_steps: auto, the interval chosen for this attempt
        command += ["--checkpoint-every", str(checkpoint_every)]
    ranks = backend.rank_layout(cfg)
    if elastic is not None:  # elastic DDP: this attempt's world size and the accumulation keeping the global batch
        command += ["--devices", str(elastic.world_size), "--accumulate-grad-batches", str(elastic.accumulate)]
        ranks = RankLayout(world_size=elastic.world_size, local_ranks=tuple(range(elastic.world_size)))
    # The owner's HOME/USER/LOGNAME first: the config's own `env` may still set them.
    env = trainer_environment(cfg, Path(job.workdir), run_as.environment(base_env) if run_as else dict(base_env))
    env.update({"ML_SUPERVISOR_JOB_ID": job.id, "ML_SUPERVISOR_ATTEMPT": str(n),
                "ML_SUPERVISOR_RESTARTS": str(job.restarts), "ML_SUPERVISOR_BOOT_ID": boot_id})
    env[OWN_ENV_KEY] = str(state_dir)  # also marks our processes for the GPU pre-flight
    # CUDA numbers GPUs like NVML only in PCI order; an empty list keeps a CPU job off every GPU.
    env.update(cuda_environment(list(gpus)))
    return AttemptSpec(job_id=job.id, attempt=n, command=tuple(command), env=env, workdir=job.workdir,
                       attempt_dir=jl.attempt(n).dir, lock_path=jl.lock, gpus=tuple(gpus), resume_from=resume.path,
                       deadline=deadline, ranks=ranks, options=backend.options(cfg), run_as=run_as)
