"""How many trainer processes (ranks) a job runs, and how many GPUs it needs (pure; no Lightning import).

A job with an integer ``trainer.devices: N > 1`` and a DDP strategy (``ddp``,
``ddp_find_unused_parameters_*``, or ``auto``/unset, which Lightning turns into
DDP when there are several devices) runs N local ranks, one process each,
started by the supervisor's attempt monitor the way torchrun starts them.
Lightning's own launchers (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``) would
start ranks the supervisor cannot see, so they are refused at submit, as are
several nodes (one node only) and the sharded strategies (``fsdp``,
``deepspeed``: their checkpoints are directories, which the atomic save and
the manifest do not handle).

``supervision.gpus`` defaults to ``trainer.devices`` when that is an integer
and the accelerator is a GPU (one GPU per rank); set to anything else, it is a
config error, since the ranks would share or lack GPUs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from supervisor.errors import ConfigError

GPU_ACCELERATORS = ("gpu", "cuda")
# Strategies under which externally started ranks join one process group (Lightning's DDPStrategy).
DDP_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false", "auto")
SELF_LAUNCHING = ("ddp_spawn", "ddp_fork", "ddp_notebook")
SHARDED = ("fsdp", "deepspeed")


def local_ranks(trainer_args: Mapping[Any, Any]) -> int:
    """Trainer processes to start for ``trainer_args`` (the config's ``trainer`` section); 1 unless DDP."""
    devices = trainer_args.get("devices")
    strategy = trainer_args.get("strategy") or "auto"
    if isinstance(devices, bool) or not isinstance(devices, int) or devices <= 1:
        return 1
    if not isinstance(strategy, str) or strategy.lower() not in DDP_STRATEGIES:
        return 1
    return devices


def check_ranks(trainer_args: Mapping[Any, Any], gpus: int | None, source: str, backend: str = "local") -> int:
    """Validate the ranks and GPUs of a job; the ``supervision.gpus`` to record (its default resolved).

    On the Slurm backend srun starts the ranks over several nodes and Slurm allocates the GPUs
    (``slurm.gpus_per_node``): only the strategy rules apply, and the daemon allocates no GPU (0).

    Raises ``ConfigError`` naming the key for a combination the supervisor cannot run.
    """
    devices = trainer_args.get("devices")
    strategy = trainer_args.get("strategy")
    accelerator = str(trainer_args.get("accelerator") or "auto").lower()
    int_devices = devices if isinstance(devices, int) and not isinstance(devices, bool) else None
    if isinstance(strategy, str):
        name = strategy.lower()
        if any(word in name for word in SHARDED):
            raise ConfigError(source, "trainer.strategy",
                              f"{strategy!r} is not supported: its sharded checkpoints are directories, which the "
                              "supervisor cannot save atomically or verify yet; use ddp")
        if name in SELF_LAUNCHING and (int_devices is None or int_devices > 1):
            raise ConfigError(source, "trainer.strategy",
                              f"{strategy!r} starts its ranks itself, out of the supervisor's sight; use ddp "
                              "(the supervisor starts one process per device)")
    if backend == "slurm":
        return 0
    nodes = trainer_args.get("num_nodes", 1)
    if nodes not in (None, 1):
        raise ConfigError(source, "trainer.num_nodes", f"must be 1: the supervisor runs jobs on one node; got {nodes}")
    on_gpu = accelerator in GPU_ACCELERATORS
    if gpus is None:
        return int_devices if on_gpu and int_devices is not None and int_devices > 0 else 0
    ranks = local_ranks(trainer_args)
    if on_gpu and int_devices is not None and gpus != int_devices:
        raise ConfigError(source, "supervision.gpus",
                          f"{gpus} does not match trainer.devices {int_devices}: each rank needs its own GPU "
                          "(leave supervision.gpus unset to take trainer.devices)")
    if ranks > 1 and gpus and accelerator == "cpu":
        raise ConfigError(source, "supervision.gpus",
                          f"the job asks for {gpus} GPUs but trainer.accelerator is {accelerator!r}; "
                          "set trainer.accelerator: gpu")
    return gpus
