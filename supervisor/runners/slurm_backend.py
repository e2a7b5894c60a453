"""The ``slurm`` backend: attempts as Slurm allocations, or steps of a held one (docs/slurm.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from supervisor.runners.backend import Backend, LaunchNews, RunnerContext
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
    job_id, nodes = state.get("slurm_job_id"), state.get("nodes") or state.get("step_nodes") or None
    step = state.get("slurm_step_id") or None
    return {"slurm_job_id": job_id, "slurm_step_id": step, "slurm_state": state.get("state"), "nodes": nodes,
            "in_allocation": state.get("in_allocation"), "standby": state.get("standby"),
            "where": (f"slurm {job_id}.{step}" if step else f"slurm {job_id}") if job_id else None,
            "placement": nodes}


def _launch_news(state: RunnerState) -> LaunchNews:
    """A restart inside the allocation: how the launch event tells it, and its node events."""
    events = [(str(e["kind"]), str(e["message"]), dict(e)) for e in state.get("node_events") or []]
    return LaunchNews(note=state.get("launch_note"), events=events)


# sbatch runs as the daemon's user: another user's code never runs that way (no run_as). Standbys are steps of a
# held allocation (slurm_standby), on its compute nodes: only with ``supervision.standby: on``, never ``auto``
# (the daemon cannot see those nodes' memory).
SLURM = Backend(name="slurm", make_runner=_runner, rank_layout=_rank_layout, options=_options,
                supports_standby=True, supports_run_as=False, describe=_describe, launch_news=_launch_news,
                restart_alert_at_launch=True, standby_auto=False)
