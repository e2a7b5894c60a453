"""The backend record: everything backend-specific the core and the views ask about, in one place per backend.

The daemon builds one runner per record at start (``registry.build_runners``);
the core launches a job's attempts with the runner of ``supervision.backend``,
follows an attempt with the runner of its persisted kind, and otherwise asks
the record (rank layout, runner options, what it supports, how to show an
attempt). Adding a backend is one module with its record plus its line in
``registry.BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from supervisor.gpu.backend import GpuBackend
from supervisor.runners.base import AttemptRunner, Notify, RankLayout, RunnerState
from supervisor.settings import DaemonSettings


@dataclass(frozen=True)
class RunnerContext:
    """What a backend's runner is built from (the daemon's side of it)."""

    state_dir: Path
    notify: Notify
    settings: DaemonSettings
    gpu_backend: Callable[[], GpuBackend | None]  # NVML, once the GPU monitor is open (None: no GPUs)


@dataclass(frozen=True)
class LaunchNews:
    """What a launch has to tell beyond the core's own words: a note for its event, and events of its own."""

    note: str | None = None  # appended to the launch event (e.g. "inside allocation 1234 on n1,n3 (n2 drained)")
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (event kind, message, data)


def no_news(state: RunnerState) -> LaunchNews:
    """A backend whose launches say nothing more."""
    return LaunchNews()


@dataclass(frozen=True)
class Backend:
    """One value of ``supervision.backend``: its runner and its rules."""

    name: str  # the config's value, and the runner's kind (``attempts.runner_kind``)
    make_runner: Callable[[RunnerContext], AttemptRunner]
    rank_layout: Callable[[DictConfig], RankLayout]  # the ranks every attempt of a job runs (frozen config)
    options: Callable[[DictConfig], Mapping[str, Any]]  # ``AttemptSpec.options``: the runner's config sections
    supports_standby: bool  # its runner keeps standby trainers (``base.StandbyRunner``)
    supports_run_as: bool  # it can run another user's job as that user (shared-server mode)
    # An attempt's runner state -> what ``status`` shows of it: ``where`` (e.g. "slurm 123") and
    # ``placement`` (e.g. a node list) replace the local pid and GPUs in the table; other keys go to --json.
    describe: Callable[[RunnerState], dict[str, Any]]
    # A launched attempt's runner state -> what its launch event adds (``LaunchNews``).
    launch_news: Callable[[RunnerState], LaunchNews] = no_news
    # Its launch decides where a restart runs (e.g. inside the allocation or a new one): the restart alert
    # waits for the launch and tells it (``core.restart_alerts``); else it goes with the policy's decision.
    restart_alert_at_launch: bool = False
    # ``supervision.standby: auto`` may turn a standby on (False: only ``on`` does; the standby's resources are
    # not the daemon's to measure)
    standby_auto: bool = True


def no_options(cfg: DictConfig) -> Mapping[str, Any]:
    """A backend whose runner reads no config section of its own."""
    return {}


def nothing_to_describe(state: RunnerState) -> dict[str, Any]:
    """A backend whose attempts ``status`` shows by pid and GPUs alone."""
    return {}
