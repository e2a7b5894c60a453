"""Elastic DDP, an elastic job's shape from its frozen config: the submit check, the plan at a size, the words.

Reads ``supervision.elastic`` and ``trainer`` for the pure rule (``rules/elastic.py``); no I/O.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from supervisor.config.ranks import local_ranks
from supervisor.errors import ConfigError
from supervisor.rules.elastic import Elastic, ElasticPlan, accumulation_for, check_elastic


def _trainer_args(cfg: DictConfig) -> dict[str, Any]:
    args = OmegaConf.to_container(cfg.trainer, resolve=False)
    return {str(k): v for k, v in args.items()} if isinstance(args, dict) else {}


def elastic_of(cfg: DictConfig) -> Elastic | None:
    """The job's elastic settings (None: not elastic). Only for a config ``check_elastic_job`` accepted."""
    section = cfg.supervision.get("elastic")
    if section is None or section.get("min_devices") is None:
        return None
    args = _trainer_args(cfg)
    accumulate = args.get("accumulate_grad_batches") or 1
    return Elastic(devices=int(args["devices"]), accumulate=int(accumulate), min_devices=int(section.min_devices),
                   sizes=tuple(int(s) for s in section.sizes))


def check_elastic_job(cfg: DictConfig, source: str) -> None:
    """Refuse (``ConfigError``, one line naming the key) an elastic config that cannot run or keep its batch."""
    section = cfg.supervision.get("elastic")
    if section is None or section.get("min_devices") is None:
        return
    key = "supervision.elastic"
    if str(cfg.supervision.backend) != "local":
        raise ConfigError(source, key, "elastic DDP runs on one node: needs supervision.backend local")
    args = _trainer_args(cfg)
    devices = args.get("devices")
    if isinstance(devices, bool) or not isinstance(devices, int) or local_ranks(args) != devices:
        raise ConfigError(source, key, f"needs a DDP job with an integer trainer.devices >= 2; got {devices!r}")
    accumulate = args.get("accumulate_grad_batches", 1)
    if accumulate is None:
        accumulate = 1
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(source, key, f"needs an integer trainer.accumulate_grad_batches; got {accumulate!r}")
    if int(cfg.supervision.gpus or 0) != devices:
        raise ConfigError(source, key, f"shrinks over lost GPUs: needs supervision.gpus = trainer.devices "
                                       f"({devices}); got {cfg.supervision.gpus}")
    why = check_elastic(devices, accumulate, int(section.min_devices), [int(s) for s in section.sizes])
    if why is not None:
        raise ConfigError(source, key, why)


def plan_for(cfg: DictConfig, gpus: int) -> ElasticPlan | None:
    """An elastic job's shape on ``gpus`` GPUs (placement chose an allowed size); None for any other job."""
    elastic = elastic_of(cfg)
    if elastic is None:
        return None
    accumulate = accumulation_for(elastic, gpus)
    assert accumulate is not None, f"placement chose {gpus} GPUs, a size that cannot keep the global batch"
    return ElasticPlan(world_size=gpus, accumulate=accumulate)


def resize_text(plan: ElasticPlan, devices: int, was: int, lost: list[int], *, first: bool = False) -> str:
    """One line for the event and the alert: what was lost or came back, and the new shape."""
    shape = (f"{plan.world_size} of {devices} GPUs, accumulating {plan.accumulate} "
             f"batch{'es' if plan.accumulate != 1 else ''}")
    if first:
        return f"not enough healthy GPUs free: starting on {shape}"
    if plan.world_size < was:
        why = f"GPU {','.join(map(str, lost))} lost" if lost else "GPUs lost"
        return f"{why}: continuing on {shape}"
    back = "back to its configured size" if plan.world_size == devices else "growing"
    return f"GPUs returned: {back}, {shape}"
