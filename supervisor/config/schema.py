"""The job config schema: one YAML file describes a whole supervised run.

These dataclasses are OmegaConf structured configs: OmegaConf checks key names
and types when a YAML file is merged into them, and ``validate.py`` adds the
checks types cannot express (durations, choices, ranges). Section and key names
are part of the user interface: change them only with a migration note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from supervisor.config.keyword_fields import keyword_field

# Optional[...] rather than "X | None": OmegaConf reads these annotations at
# runtime and understands the typing form best.

RESUME_CHOICES = ("best", "last", "auto")
STANDBY_CHOICES = ("auto", "on", "off")
MODE_CHOICES = ("min", "max")
WANDB_MODES = ("online", "offline", "disabled")
WATCH_CHOICES = ("gradients", "parameters", "all", "none")
BACKENDS = ("local", "slurm")
ALERT_EVENTS = ("restart", "hang", "gpu_fault", "failed", "budget", "completed", "stopped", "reboot", "straggler",
                "resize")
DEFAULT_ALERTS = ["restart", "hang", "gpu_fault", "failed", "budget", "completed", "reboot", "straggler", "resize"]
STRAGGLER_ACTIONS = ("alert", "restart_without")


@dataclass
class ClassSpec:
    """A class to build, in the LightningCLI convention."""

    class_path: str = MISSING
    init_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckpointConfig:
    """How the trainer saves checkpoints (a Lightning ModelCheckpoint, plus a manifest)."""

    monitor: str | None = None  # None: no metric; "best" then means newest
    mode: str = "min"
    save_top_k: int = 3
    save_last: bool = True
    # steps between saves; "auto": Young/Daly's optimum from the save's cost and the job's failures (rules/cadence.py)
    every_n_train_steps: Any = None
    assumed_mtbf: str = "24h"  # with every_n_train_steps: auto, the mean time between failures before any
    train_time_interval: str | None = None  # a duration
    every_n_epochs: int | None = None
    filename: str = "{epoch}-{step}"
    save_weights_only: bool = False
    # the YAML key "async" (a Python keyword): saves are written by a thread while training goes on
    async_save: bool = False


keyword_field(CheckpointConfig, "async_save", "async")


@dataclass
class WandbConfig:
    """Weights & Biases logging; one W&B run spans every attempt of a job."""

    project: str = "ml-supervisor"
    entity: str | None = None
    # online falls back to offline when no API key is configured
    mode: str = "online"
    name: str | None = None  # run display name; default: the job name
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    watch: str = "none"
    watch_log_freq: int = 100
    # Fixed per job by the supervisor when it freezes the config; every attempt
    # resumes this run. Leave unset when writing a config.
    run_id: str | None = None
    dir: str | None = None


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class EarlyStoppingConfig:
    monitor: str | None = None  # None: early stopping off
    patience: int = 3
    mode: str = "min"
    min_delta: float = 0.0


@dataclass
class CallbacksConfig:
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    lr_monitor: bool = False
    # a W&B table of validation inputs, predictions and targets each validation epoch (trainer/callbacks/log_samples.py)
    log_samples: bool = False
    log_samples_count: int = 16
    extra: list[ClassSpec] = field(default_factory=list)


@dataclass
class BackoffConfig:
    """Delay before restart k of a failing streak: initial * factor**(k-2), capped at max.

    The first restart of a streak is immediate.
    """

    initial: str = "10s"
    factor: float = 2.0
    max: str = "5m"


@dataclass
class DivergenceConfig:
    """A diverging loss (NaN/inf, or a spike): roll back to the checkpoint before it (docs/divergence.md)."""

    enabled: bool = True
    # A spike: after warmup_steps, the loss above spike_factor x the median of the last spike_window finite
    # losses for spike_patience consecutive steps. None: non-finite losses only.
    spike_factor: float | None = 10.0
    spike_patience: int = 5
    spike_window: int = 50
    warmup_steps: int = 100
    rollback_margin_steps: int = 0  # resume from a checkpoint at least this many steps before the first bad step
    skip_batches: int = 0  # the resumed attempt drops this many training batches (data that caused a spike)
    lr_scale: float = 1.0  # the resumed attempt multiplies its learning rates by this, once
    max_rollbacks: int = 3  # divergences before the job ends failed (end_reason: diverged)


@dataclass
class StragglersConfig:
    """A rank (or a single-process job) that runs but slows everyone down (docs/stragglers.md)."""

    enabled: bool = True
    threshold: float = 0.7  # a rank whose pace stays under this share of its peers' is a straggler
    window: int = 6  # observations in a row (one per poll, with new steps on every rank)
    slow_factor: float = 1.5  # a single-process job slower than this x its own best is slowed down
    action: str = "alert"  # alert | restart_without (quarantine the straggler's GPU and relaunch elsewhere)


@dataclass
class ElasticConfig:
    """Elastic DDP on one node (docs/elastic.md): lose GPUs, go on with fewer at the same global batch."""

    min_devices: int | None = None  # None: off; set: shrink down to this many devices when GPUs are lost
    sizes: list[int] = field(default_factory=list)  # the allowed world sizes; empty: min_devices..trainer.devices


@dataclass
class SupervisionConfig:
    """The supervision policy, read by the daemon (validated here so errors come early)."""

    budget: str | None = None  # wall-clock time from first start; None: no budget
    max_restarts: int = 10
    restart_window: str = "1h"
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    resume_from: str = "best"
    hang_timeout: str = "auto"
    # give up after this many consecutive attempts that saved no new checkpoint
    no_progress_attempts: int = 3
    stop_grace: str = "60s"  # SIGTERM -> SIGKILL
    gpus: int | None = None  # None: trainer.devices on a GPU accelerator, else 0 (config/ranks.py)
    # a standby trainer (imports done, model built) waiting to take over a restart; auto: when memory allows
    standby: str = "auto"
    alerts: list[str] = field(default_factory=lambda: list(DEFAULT_ALERTS))
    backend: str = "local"  # local | slurm (the ``slurm:`` section then says how; docs/slurm.md)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    stragglers: StragglersConfig = field(default_factory=StragglersConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)


@dataclass
class SlurmConfig:
    """One allocation of a job on a Slurm cluster (``supervision.backend: slurm``); docs/slurm.md.

    ``nodes`` must equal ``trainer.num_nodes`` and ``ntasks_per_node`` ``trainer.devices``
    (Lightning's SLURM environment refuses otherwise); unset Trainer keys are filled in.
    """

    partition: str | None = None
    nodes: int = 1
    ntasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem: str | None = None  # sbatch --mem ("0": all of each node's memory)
    time: str | None = None  # one allocation's limit (sbatch --time); the job goes on in a new one
    signal: str | None = "USR1@120"  # sbatch --signal: SIGUSR1 = save a checkpoint, before the limit
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra_args: list[str] = field(default_factory=list)  # more sbatch options, verbatim
    setup: list[str] = field(default_factory=list)  # shell lines run before srun (module load ..., conda activate ...)
    # Restarts inside the allocation (docs/slurm.md): the batch script holds it, each restart a new srun step;
    # past this many (or once the allocation ends) the next attempt is a new allocation. 0: one per attempt.
    in_allocation_restarts: int = 3
    spare_nodes: int = 0  # nodes asked for beyond ``nodes``: a step that loses a node takes a spare instead
    hold_s: int = 600  # how long a held allocation waits for the daemon's next step before it gives itself back


@dataclass
class JobConfig:
    """The whole job: what to train, how, and how to supervise it."""

    name: str = MISSING
    workdir: str | None = None  # default: where the config was submitted from
    python: str | None = None  # default: the supervisor's interpreter
    env: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    model: ClassSpec = field(default_factory=ClassSpec)
    data: ClassSpec = field(default_factory=ClassSpec)
    trainer: dict[str, Any] = field(default_factory=dict)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    # Knobs a web-launcher template offers (see docs); ignored by the trainer.
    ui: dict[str, Any] = field(default_factory=dict)
