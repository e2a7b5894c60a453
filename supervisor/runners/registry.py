"""The backends this daemon knows, by name (``supervision.backend``): the one list to extend."""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig

from supervisor.errors import SupervisorError
from supervisor.runners.backend import Backend, RunnerContext
from supervisor.runners.base import AttemptRunner
from supervisor.runners.local_backend import LOCAL
from supervisor.runners.slurm_backend import SLURM

BACKENDS: Mapping[str, Backend] = {backend.name: backend for backend in (LOCAL, SLURM)}


def backend_named(name: str) -> Backend:
    """The record of ``name``; a one-line error naming the known ones otherwise."""
    backend = BACKENDS.get(name)
    if backend is None:
        raise SupervisorError(f"no backend {name!r} (known: {', '.join(sorted(BACKENDS))})")
    return backend


def backend_of(cfg: DictConfig) -> Backend:
    """The record of a job's frozen config (``supervision.backend``)."""
    return backend_named(str(cfg.supervision.backend))


def job_world_size(cfg: DictConfig) -> int:
    """The ranks every attempt of a job runs (the same rule the launch uses)."""
    return backend_of(cfg).rank_layout(cfg).world_size


def build_runners(ctx: RunnerContext) -> dict[str, AttemptRunner]:
    """One runner per backend, by backend name."""
    return {name: backend.make_runner(ctx) for name, backend in BACKENDS.items()}
