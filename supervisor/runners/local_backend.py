"""The ``local`` backend: attempt monitors on this node, with standby trainers (``standby.StandbyLocalRunner``)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from supervisor.config.ranks import local_ranks
from supervisor.runners.backend import Backend, RunnerContext, no_options, nothing_to_describe
from supervisor.runners.base import AttemptRunner, RankLayout
from supervisor.runners.standby import StandbyLocalRunner


def _runner(ctx: RunnerContext) -> AttemptRunner:
    return StandbyLocalRunner(ctx.state_dir, ctx.notify, watch_exits=ctx.settings.watch_files,
                              gpu_backend=ctx.gpu_backend, preflight_wait_s=ctx.settings.gpu.preflight_wait)


def _rank_layout(cfg: DictConfig) -> RankLayout:
    """DDP on one node: one process per device, all local."""
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=False)
    n = local_ranks(trainer_args) if isinstance(trainer_args, dict) else 1
    return RankLayout(world_size=n, local_ranks=tuple(range(n)))


LOCAL = Backend(name="local", make_runner=_runner, rank_layout=_rank_layout, options=no_options,
                supports_standby=True, supports_run_as=True, describe=nothing_to_describe)
