"""A job config as every part of the trainer loads it: the config, its workdir and env, its classes.

One loader for the fit, the standby, the zygote, ``--check`` and the inspection
tools, so each checks and runs exactly what the others do. Problems are
``ConfigError``s: one line naming the file and the key. Torch-free at import
(``resolve_job`` imports Lightning when called).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig

from supervisor.config import load_job_config
from supervisor.errors import ConfigError
from trainer.build import ResolvedJob, resolve_job

T = TypeVar("T")


def apply_environment(cfg: DictConfig, source: str) -> None:
    """Put the job's ``workdir`` first on ``sys.path`` and its ``env`` in ``os.environ``."""
    workdir = Path(cfg.workdir).expanduser() if cfg.workdir else Path.cwd()
    if not workdir.is_dir():
        raise ConfigError(source, "workdir", f"no such directory: {cfg.workdir}")
    workdir_text = str(workdir.absolute())
    if workdir_text in sys.path:
        sys.path.remove(workdir_text)
    sys.path.insert(0, workdir_text)
    for key, value in cfg.env.items():
        os.environ[str(key)] = str(value)


def load_config(source: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Load the job config ``source`` with ``overrides`` and apply its workdir and env (before torch loads)."""
    cfg = load_job_config(source, overrides)
    apply_environment(cfg, source)
    return cfg


@dataclass
class LoadedJob:
    """A job config loaded, its environment applied and its classes resolved (nothing built yet)."""

    cfg: DictConfig
    source: str
    job: ResolvedJob

    def build_model(self) -> Any:
        """The config's LightningModule, built with its ``init_args``."""
        return guarded(self.source, "model", "building the module", self.job.model.build)

    def build_data(self) -> Any:
        """The config's LightningDataModule, built with its ``init_args``."""
        return guarded(self.source, "data", "building the DataModule", self.job.data.build)


def load_job(config: str, overrides: Sequence[str] = ()) -> LoadedJob:
    """Load ``config`` with ``overrides``, apply its workdir and env, and resolve its classes."""
    cfg = load_config(config, overrides)
    return LoadedJob(cfg=cfg, source=config, job=resolve_job(cfg, config))


def guarded(source: str, key: str, doing: str, fn: Callable[[], T]) -> T:
    """Run the user's code ``fn``; an exception becomes one line naming the file and the config key."""
    try:
        return fn()
    except ConfigError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ConfigError(source, key, f"{doing} failed: {type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
                          ) from None
