"""Check and resolve what a job config names: classes, their arguments, Trainer arguments.

Used by ``--check`` (at submit time) and before every fit. Each problem is a
``ConfigError`` naming the file and the key, e.g.

    configs/x.yaml: model.class_path: cannot import 'foo.Bar': No module named 'foo'
    configs/x.yaml: model.class_path: 'pkg.mod.Thing' is not a LightningModule
    configs/x.yaml: trainer.max_epoch: not an argument of Trainer
    configs/x.yaml: trainer.max_epochs: expected int or None; got 'ten'

Names are checked here; values against the type hints by ``signature_check`` (jsonargparse).
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from omegaconf import DictConfig, OmegaConf

from supervisor.config import parse_duration
from supervisor.errors import ConfigError
from trainer.signature_check import check_argument_types

# Trainer arguments the supervisor sets itself, with what to use instead.
RESERVED_TRAINER_ARGS = {
    "callbacks": "set by the supervisor; list your callbacks under callbacks.extra",
    "logger": "set by the supervisor; configure logging under logger.wandb",
}
_DDHHMMSS = re.compile(r"^\s*(\d+):(\d\d):(\d\d):(\d\d)\s*$")


@dataclass
class ResolvedClass:
    """A class a config names, with the plain-Python arguments to build it with."""

    cls: type
    init_args: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        """An instance of the class, built with its ``init_args``."""
        return self.cls(**self.init_args)


@dataclass
class ResolvedJob:
    """Everything ``--check`` validates, ready for the fit (``trainer.fit``) to build."""

    model: ResolvedClass
    data: ResolvedClass
    callbacks: list[ResolvedClass]
    trainer_args: dict[str, Any]


# Strategies whose checkpoints are directories of shards (refused, see trainer_args).
SHARDED_STRATEGIES = ("fsdp", "deepspeed")


def resolve_job(cfg: DictConfig, source: str) -> ResolvedJob:
    """Import and check the model, data and extra callback classes and the Trainer arguments.

    Imports torch and Lightning (through the user's classes and for the base
    classes). Raises ``ConfigError`` on the first problem.
    """
    from pytorch_lightning import Callback, LightningDataModule, LightningModule  # once the job's env is applied

    model = _resolve_spec(cfg.model, "model", source, LightningModule, "LightningModule")
    data = _resolve_spec(cfg.data, "data", source, LightningDataModule, "LightningDataModule")
    callbacks = [
        _resolve_spec(spec, f"callbacks.extra[{i}]", source, Callback, "Lightning Callback")
        for i, spec in enumerate(cfg.callbacks.extra)
    ]
    return ResolvedJob(model=model, data=data, callbacks=callbacks, trainer_args=trainer_args(cfg, source))


def trainer_args(cfg: DictConfig, source: str) -> dict[str, Any]:
    """``cfg.trainer`` as ``Trainer`` keyword arguments, each key checked against ``Trainer.__init__``."""
    from pytorch_lightning import Trainer  # as in resolve_job: this module is torch-free at import

    args: dict[str, Any] = _plain(cfg.trainer)
    accepted = inspect.signature(Trainer.__init__).parameters
    for key, value in args.items():
        if key in RESERVED_TRAINER_ARGS:
            raise ConfigError(source, f"trainer.{key}", RESERVED_TRAINER_ARGS[key])
        if key not in accepted or key == "self":
            raise ConfigError(source, f"trainer.{key}", "not an argument of Trainer")
        if key == "enable_checkpointing" and value is False:
            raise ConfigError(source, "trainer.enable_checkpointing",
                              "must stay true: the supervisor resumes from checkpoints "
                              "(set checkpoint.save_top_k: 0 to keep only last.ckpt)")
    strategy = args.get("strategy")
    if isinstance(strategy, str) and any(word in strategy.lower() for word in SHARDED_STRATEGIES):
        # Their checkpoints are directories of shards: the atomic save, the manifest and the zip check
        # handle single files only, so a resume could pick a half-written checkpoint.
        raise ConfigError(source, "trainer.strategy",
                          f"{strategy!r} is not supported: its sharded checkpoints are directories, which the "
                          "supervisor cannot save atomically or verify yet; use ddp")
    # Values against Trainer's type hints: a bad one would fail every attempt inside Trainer(...).
    check_argument_types(Trainer, args, key="trainer", source=source, skip=set(RESERVED_TRAINER_ARGS))
    if args.get("max_time") is not None:
        try:
            args["max_time"] = parse_max_time(args["max_time"])
        except ValueError as exc:
            raise ConfigError(source, "trainer.max_time", str(exc)) from None
    return args


def parse_max_time(value: Any) -> timedelta:
    """``Trainer(max_time=...)`` in any form Lightning takes (``DD:HH:MM:SS``, a mapping) or a duration (``12h``)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, dict):
        try:
            return timedelta(**value)
        except TypeError as exc:
            raise ValueError(f"expected keys like days, hours, minutes: {exc}") from None
    if isinstance(value, str) and (match := _DDHHMMSS.match(value)):
        days, hours, minutes, seconds = (int(g) for g in match.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    try:
        return timedelta(seconds=parse_duration(value))
    except ValueError:
        raise ValueError(f"expected DD:HH:MM:SS, a duration like 12h, or a mapping; got {value!r}") from None


def import_object(path: str) -> Any:
    """The object a dotted path names (``pkg.mod.Class`` or ``pkg.mod.Outer.Inner``).

    Raises ``ImportError`` with a one-line reason.
    """
    parts = path.split(".")
    missing: ModuleNotFoundError | None = None  # the longest prefix that is not a module
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                missing = missing or exc  # this prefix is not a module: maybe a shorter one is (Outer.Inner)
                continue
            raise ImportError(_one_line(exc)) from None  # the module exists but imports something missing
        except Exception as exc:
            raise ImportError(f"{type(exc).__name__}: {_one_line(exc)}") from None
        for depth in range(split, len(parts)):
            try:
                obj = getattr(obj, parts[depth])
            except AttributeError:
                if missing is not None:
                    raise ImportError(_one_line(missing)) from None
                owner = ".".join(parts[:depth])
                raise ImportError(f"module {owner!r} has no attribute {parts[depth]!r}") from None
        return obj
    raise ImportError(_one_line(missing))


def _resolve_spec(spec: DictConfig, key: str, source: str, base: type, base_name: str) -> ResolvedClass:
    path = str(spec.class_path)
    try:
        obj = import_object(path)
    except ImportError as exc:
        raise ConfigError(source, f"{key}.class_path", f"cannot import {path!r}: {exc}") from None
    if not inspect.isclass(obj):
        raise ConfigError(source, f"{key}.class_path", f"{path!r} is not a class")
    if not issubclass(obj, base):
        raise ConfigError(source, f"{key}.class_path", f"{path!r} is not a {base_name}")
    init_args = _plain(spec.init_args)
    _check_init_args(obj, init_args, f"{key}.init_args", source)
    check_argument_types(obj, init_args, key=f"{key}.init_args", source=source)
    return ResolvedClass(obj, init_args)


def _check_init_args(cls: type, init_args: dict[str, Any], key: str, source: str) -> None:
    """Names only (values are the class's business): unknown arguments and missing required ones."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return  # no introspectable signature (some C types): let construction decide
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {name for name, p in params.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    if not takes_any:
        for name in init_args:
            if name not in named:
                raise ConfigError(source, f"{key}.{name}", f"not an argument of {cls.__qualname__}")
    for name, p in params.items():
        required = p.default is inspect.Parameter.empty and p.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        if required and name not in init_args:
            raise ConfigError(source, key, f"missing required argument {name!r} of {cls.__qualname__}")


def _plain(node: Any) -> dict[str, Any]:
    container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def _one_line(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines() if exc is not None else []
    return text[0] if text else type(exc).__name__
