"""Elastic DDP on one node (pure): which world size an attempt runs at, and how many batches it accumulates.

``supervision.elastic: {min_devices: N, sizes: [...]}``. The per-device batch is the
data module's and stays as configured; what changes with the world size is the
gradient accumulation, so that ``size x accumulation`` equals the configured
``devices x accumulate_grad_batches`` (the global batch, in per-device batches).
A size for which that is not an integer is not allowed, and a config whose
allowed sizes (``sizes``, or every size from ``min_devices`` to ``devices``)
include one is refused at submit (``check_elastic``), naming the sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ElasticPlan:
    """One attempt's shape: its world size and its ``accumulate_grad_batches``."""

    world_size: int
    accumulate: int

    @property
    def global_batches(self) -> int:
        """Per-device batches in one optimizer step (``world_size x accumulate``)."""
        return self.world_size * self.accumulate


@dataclass(frozen=True)
class Elastic:
    """A job's elastic settings against its configured shape."""

    devices: int  # trainer.devices: the configured (full) world size
    accumulate: int  # trainer.accumulate_grad_batches as configured (1 when unset)
    min_devices: int
    sizes: tuple[int, ...] = ()  # the allowed sizes; empty: every size from min_devices to devices

    def allowed(self) -> tuple[int, ...]:
        """The allowed world sizes, largest first (the configured size always among them)."""
        sizes = set(self.sizes) if self.sizes else set(range(self.min_devices, self.devices + 1))
        sizes = {s for s in sizes if self.min_devices <= s <= self.devices} | {self.devices}
        return tuple(sorted(sizes, reverse=True))

    @property
    def global_batches(self) -> int:
        return self.devices * self.accumulate


def accumulation_for(elastic: Elastic, size: int) -> int | None:
    """``accumulate_grad_batches`` that keeps the global batch at ``size`` devices (None: none does)."""
    if size <= 0:
        return None
    whole, rest = divmod(elastic.global_batches, size)
    return whole if rest == 0 else None


def unkeepable_sizes(elastic: Elastic) -> list[int]:
    """The allowed sizes at which the global batch cannot be kept (the global batch is not a multiple)."""
    return [s for s in elastic.allowed() if accumulation_for(elastic, s) is None]


def choose_plan(elastic: Elastic, healthy_free: int) -> ElasticPlan | None:
    """The largest allowed size that fits on ``healthy_free`` GPUs and keeps the global batch; None: wait.

    The configured size whenever it fits; never below ``min_devices``.
    """
    for size in elastic.allowed():
        accumulate = accumulation_for(elastic, size)
        if size <= healthy_free and accumulate is not None:
            return ElasticPlan(world_size=size, accumulate=accumulate)
    return None


def should_grow(elastic: Elastic, current: int, healthy_free_besides: int) -> ElasticPlan | None:
    """A running attempt at ``current`` devices, ``healthy_free_besides`` more GPUs free: the larger plan, or None.

    Only ever to a larger size (the GPUs it holds plus the free ones); a job at its configured size never grows.
    """
    if current >= elastic.devices:
        return None
    plan = choose_plan(elastic, current + healthy_free_besides)
    return plan if plan is not None and plan.world_size > current else None


def check_elastic(devices: int, accumulate: int, min_devices: int, sizes: Sequence[int]) -> str | None:
    """Why this elastic setting cannot hold (one line, naming the sizes), or None when it can."""
    if devices < 2:
        return f"needs a DDP job of trainer.devices >= 2; got {devices}"
    if not 1 <= min_devices <= devices:
        return f"min_devices must be between 1 and trainer.devices ({devices}); got {min_devices}"
    bad = [s for s in sizes if not 1 <= s <= devices]
    if bad:
        return f"sizes {bad} are outside 1..trainer.devices ({devices})"
    elastic = Elastic(devices=devices, accumulate=accumulate, min_devices=min_devices, sizes=tuple(sizes))
    if len(elastic.allowed()) < 2:
        return f"allows no size but {devices}: nothing to shrink to (min_devices {min_devices}, sizes {list(sizes)})"
    unkeepable = unkeepable_sizes(elastic)
    if unkeepable:
        return (f"the global batch of {elastic.global_batches} per-device batches (trainer.devices {devices} x "
                f"accumulate_grad_batches {accumulate}) cannot be kept at size{'s' if len(unkeepable) > 1 else ''} "
                f"{', '.join(map(str, unkeepable))}: {elastic.global_batches} is not a multiple of "
                f"{'them' if len(unkeepable) > 1 else 'it'}; list the sizes that divide it in "
                "supervision.elastic.sizes")
    return None
