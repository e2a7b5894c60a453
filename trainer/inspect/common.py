"""What every inspection shares: load the job config as the trainer would, build its parts, pick a device.

The commands check exactly what the supervisor will run: the same loader,
the same ``workdir``/``env`` handling and the same class resolution as
``python -m trainer``. Problems are ``ConfigError``s (one line naming the file
and the key), including exceptions raised by the user's own constructors,
``prepare_data`` or ``setup``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig

from supervisor.config import load_job_config
from supervisor.errors import ConfigError

T = TypeVar("T")


@dataclass
class LoadedJob:
    """A job config loaded for inspection, its classes resolved (nothing built yet)."""

    cfg: DictConfig
    source: str
    job: Any  # trainer.build.ResolvedJob (imported lazily: it pulls in Lightning)

    def build_model(self) -> Any:
        """The config's LightningModule, built with its ``init_args``."""
        return guarded(self.source, "model", "building the module", self.job.model.build)

    def build_data(self) -> Any:
        """The config's LightningDataModule, built with its ``init_args``."""
        return guarded(self.source, "data", "building the DataModule", self.job.data.build)


def load_job(config: str, overrides: Sequence[str] = ()) -> LoadedJob:
    """Load ``config`` with ``overrides``, apply its workdir and env, and resolve its classes."""
    from trainer.cli import apply_environment

    cfg = load_job_config(config, overrides)
    apply_environment(cfg, config)
    from trainer.build import resolve_job

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


def choose_device(trainer_args: dict[str, Any], force_cpu: bool) -> Any:
    """The ``torch.device`` the config's accelerator means here: CUDA when asked for (or ``auto``) and present."""
    import torch

    accelerator = str(trainer_args.get("accelerator", "auto")).lower()
    if not force_cpu and accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def cpu_trainer_args(trainer_args: dict[str, Any], force_cpu: bool) -> dict[str, Any]:
    """The config's Trainer arguments, on one device, and on the CPU when ``force_cpu``."""
    args = dict(trainer_args)
    if force_cpu:
        args["accelerator"] = "cpu"
    args["devices"] = 1  # an inspection is one process: no DDP launch
    args.pop("strategy", None)
    args.pop("num_nodes", None)
    return args
