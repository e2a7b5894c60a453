"""The ``slurm`` backend: one Slurm allocation per attempt (``slurm.SlurmRunner``; docs/slurm.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from supervisor.runners.backend import Backend, RunnerContext
from supervisor.runners.base import AttemptRunner, RankLayout, RunnerState
from supervisor.runners.slurm import SlurmRunner


def _runner(ctx: RunnerContext) -> AttemptRunner:
    return SlurmRunner(ctx.notify)  # idle until a job asks for it: no thread, no poll


def _rank_layout(cfg: DictConfig) -> RankLayout:
    """srun starts ``ntasks_per_node`` ranks on each of ``nodes`` nodes."""
    per_node = int(cfg.slurm.ntasks_per_node)
    return RankLayout(world_size=per_node * int(cfg.slurm.nodes), local_ranks=tuple(range(per_node)))


def _options(cfg: DictConfig) -> Mapping[str, Any]:
    slurm = OmegaConf.to_container(cfg.slurm, resolve=True)
    assert isinstance(slurm, dict)
    return {"slurm": slurm}


def _describe(state: RunnerState) -> dict[str, Any]:
    """Where the attempt ran: its Slurm job and node list."""
    job_id, nodes = state.get("slurm_job_id"), state.get("nodes") or None
    return {"slurm_job_id": job_id, "slurm_state": state.get("state"), "nodes": nodes,
            "where": f"slurm {job_id}" if job_id else None, "placement": nodes}


# sbatch runs as the daemon's user: another user's code never runs that way (no run_as); allocations start cold.
SLURM = Backend(name="slurm", make_runner=_runner, rank_layout=_rank_layout, options=_options,
                supports_standby=False, supports_run_as=False, describe=_describe)
