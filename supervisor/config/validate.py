"""Validation of a job config: the shape of the raw mapping, then the values a type cannot check.

The loader (``loader.py``) runs ``check_sections`` before each OmegaConf merge (which
names no key for some shape errors) and ``check_values`` on the merged, resolved
config. Every problem is one ``ConfigError`` naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from supervisor.config import schema as _schema
from supervisor.config.durations import parse_duration
from supervisor.config.patterns import JOB_NAME, checkpoint_filename_problem
from supervisor.config.schema import (
    ALERT_EVENTS,
    BACKENDS,
    MODE_CHOICES,
    RESUME_CHOICES,
    STANDBY_CHOICES,
    STRAGGLER_ACTIONS,
    WANDB_MODES,
    WATCH_CHOICES,
)
from supervisor.errors import ConfigError

SECTION_TYPES: dict[str, type] = {
    name: obj for name, obj in vars(_schema).items() if isinstance(obj, type) and hasattr(obj, "__dataclass_fields__")
}
"""The schema's dataclasses by name: what a field annotated with that name holds is a section."""

_CLASS_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")


def check_sections(raw: dict[str, Any], schema: type, prefix: str, source: str, hint: str = "") -> None:
    """Sections, mappings and lists must be what they are: say so by key.

    OmegaConf's merge names no key for a section given a scalar, and raises a bare
    ``TypeError`` for a mapping given a list or the other way round.
    """
    for f in fields(schema):
        value = raw.get(f.name)
        key = f"{prefix}{f.name}"
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        target = SECTION_TYPES.get(type_name)
        if value is None:
            continue
        if target is None and isinstance(value, str) and "${" in value:
            continue  # a mapping or list from an interpolation: OmegaConf checks it when it resolves
        if target is not None:
            if not isinstance(value, dict):
                raise ConfigError(source, key, f"must be a mapping (a section), got {type(value).__name__}{hint}")
            check_sections(value, target, key + ".", source, hint)
        elif type_name.startswith("dict[") and not isinstance(value, dict):
            raise ConfigError(source, key, f"must be a mapping, got {type(value).__name__}{hint}")
        elif type_name.startswith("list["):
            if not isinstance(value, list):
                raise ConfigError(source, key, f"must be a list, got {type(value).__name__}{hint}")
            item_type = SECTION_TYPES.get(type_name[len("list["):-1])
            for i, item in enumerate(value if item_type is not None else ()):
                if not isinstance(item, dict):
                    raise ConfigError(source, f"{key}[{i}]", f"must be a mapping, got {type(item).__name__}{hint}")
                assert item_type is not None  # the loop runs only when it is set
                check_sections(item, item_type, f"{key}[{i}].", source, hint)


def check_values(cfg: DictConfig, source: str, override_keys: set[str]) -> None:
    """The checks a type cannot express. Raises on the first problem, naming its key.

    With ``backend: slurm`` it also fills ``trainer.num_nodes``/``devices`` when unset (``_check_slurm``).
    """

    def fail(key: str, problem: str) -> None:
        raise ConfigError(source, key, problem + cli_hint(key, override_keys, key in override_keys))

    def get(key: str) -> Any:
        try:
            return OmegaConf.select(cfg, key, throw_on_missing=True)
        except MissingMandatoryValue:
            fail(key, "is required")

    name = get("name")
    if not isinstance(name, str) or not JOB_NAME.match(name):
        fail("name", "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    for section in ("model", "data"):
        class_path = get(f"{section}.class_path")
        if not _CLASS_PATH.match(class_path):
            fail(f"{section}.class_path", f"{class_path!r} is not a dotted path like package.module.ClassName")
    for i in range(len(cfg.callbacks.extra)):
        class_path = get(f"callbacks.extra[{i}].class_path")  # MISSING -> "is required"
        if class_path is None or not _CLASS_PATH.match(str(class_path)):
            fail(f"callbacks.extra[{i}].class_path", f"{class_path!r} is not a dotted path")

    def duration(key: str, *, allow_none: bool = False, allow: tuple[str, ...] = ()) -> None:
        value = get(key)
        if value is None and allow_none:
            return
        if isinstance(value, str) and value in allow:
            return
        try:
            parse_duration(value)
        except ValueError as exc:
            fail(key, str(exc))

    duration("supervision.budget", allow_none=True)
    duration("supervision.restart_window")
    duration("supervision.backoff.initial")
    duration("supervision.backoff.max")
    duration("supervision.hang_timeout", allow=("auto", "off"))
    duration("supervision.stop_grace")
    duration("checkpoint.train_time_interval", allow_none=True)
    duration("checkpoint.assumed_mtbf")
    if cfg.supervision.budget is not None and parse_duration(cfg.supervision.budget) <= 0:
        fail("supervision.budget", "must be longer than zero")

    def choice(key: str, choices: tuple[str, ...]) -> None:
        value = get(key)
        if value not in choices:
            fail(key, f"must be one of {', '.join(choices)}; got {value!r}")

    choice("supervision.resume_from", RESUME_CHOICES)
    choice("supervision.standby", STANDBY_CHOICES)
    choice("checkpoint.mode", MODE_CHOICES)
    choice("callbacks.early_stopping.mode", MODE_CHOICES)
    choice("logger.wandb.mode", WANDB_MODES)
    choice("logger.wandb.watch", WATCH_CHOICES)
    for i, event in enumerate(cfg.supervision.alerts):
        if event not in ALERT_EVENTS:
            fail(f"supervision.alerts[{i}]", f"must be one of {', '.join(ALERT_EVENTS)}; got {event!r}")

    def at_least(key: str, minimum: float, *, allow_none: bool = False) -> None:
        value = get(key)
        if value is None and allow_none:
            return
        if value < minimum:
            fail(key, f"must be at least {minimum}; got {value}")

    at_least("supervision.max_restarts", 0)
    at_least("supervision.no_progress_attempts", 1)
    at_least("supervision.gpus", 0, allow_none=True)
    at_least("supervision.backoff.factor", 1.0)
    at_least("checkpoint.save_top_k", -1)
    every = get("checkpoint.every_n_train_steps")
    if every is not None and every != "auto" and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        fail("checkpoint.every_n_train_steps", f"must be a whole number of steps (at least 1) or auto; got {every!r}")
    at_least("checkpoint.every_n_epochs", 1, allow_none=True)
    at_least("callbacks.early_stopping.patience", 0)
    at_least("logger.wandb.watch_log_freq", 1)
    at_least("callbacks.log_samples_count", 1)
    at_least("supervision.divergence.spike_patience", 1)
    at_least("supervision.divergence.spike_window", 3)
    at_least("supervision.divergence.warmup_steps", 0)
    at_least("supervision.divergence.rollback_margin_steps", 0)
    at_least("supervision.divergence.skip_batches", 0)
    at_least("supervision.divergence.max_rollbacks", 0)
    spike_factor = get("supervision.divergence.spike_factor")
    if spike_factor is not None and not spike_factor > 1.0:
        fail("supervision.divergence.spike_factor", f"must be above 1 (or null: no spike check); got {spike_factor}")
    at_least("supervision.stragglers.window", 2)
    threshold = get("supervision.stragglers.threshold")
    if not 0.0 < threshold < 1.0:
        fail("supervision.stragglers.threshold", f"must be in (0, 1); got {threshold}")
    if not get("supervision.stragglers.slow_factor") > 1.0:
        fail("supervision.stragglers.slow_factor", f"must be above 1; got {get('supervision.stragglers.slow_factor')}")
    choice("supervision.stragglers.action", STRAGGLER_ACTIONS)
    lr_scale = get("supervision.divergence.lr_scale")
    if not 0.0 < lr_scale <= 1.0:
        fail("supervision.divergence.lr_scale", f"must be in (0, 1]; got {lr_scale}")
    triggers = [k for k in ("every_n_train_steps", "train_time_interval", "every_n_epochs")
                if cfg.checkpoint[k] is not None]
    if len(triggers) > 1:
        # blame the one set on the command line, if any: the file alone may be fine
        blamed = next((t for t in triggers if f"checkpoint.{t}" in override_keys), triggers[1])
        other = next(t for t in triggers if t != blamed)
        fail(f"checkpoint.{blamed}", f"set only one of every_n_train_steps, train_time_interval, "
             f"every_n_epochs (also set: {other})")
    filename_problem = checkpoint_filename_problem(get("checkpoint.filename"))
    if filename_problem is not None:
        fail("checkpoint.filename", filename_problem)
    choice("supervision.backend", BACKENDS)
    if cfg.supervision.backend == "slurm":
        _check_slurm(cfg, fail)
    for key, value in cfg.env.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(key)):
            fail(f"env.{key}", "is not a valid environment variable name")
        # OmegaConf does not enforce dict[str, str] on nested containers
        if isinstance(value, (DictConfig, ListConfig)):
            fail(f"env.{key}", f"must be a single value, got a {_kind(value)}")
    for i, tag in enumerate(cfg.logger.wandb.tags):
        if isinstance(tag, (DictConfig, ListConfig)):
            fail(f"logger.wandb.tags[{i}]", f"must be a single value, got a {_kind(tag)}")


_SLURM_SIGNAL = re.compile(r"^(B:|R:)?(SIG)?[A-Z0-9]+(@[0-9]+)?$")
_SLURM_TIME = re.compile(r"^([0-9]+-)?[0-9]+(:[0-9]{1,2}){0,2}$")


def _check_slurm(cfg: DictConfig, fail: Callable[[str, str], None]) -> None:
    """The ``slurm:`` section against itself and the Trainer (fills ``trainer.num_nodes``/``devices`` when unset)."""
    slurm = cfg.slurm
    for key in ("nodes", "ntasks_per_node"):
        if slurm[key] < 1:
            fail(f"slurm.{key}", f"must be at least 1; got {slurm[key]}")
    for key in ("gpus_per_node", "in_allocation_restarts", "spare_nodes"):
        if slurm[key] < 0:
            fail(f"slurm.{key}", f"must be at least 0; got {slurm[key]}")
    if slurm.hold_s < 1:
        fail("slurm.hold_s", f"must be at least 1; got {slurm.hold_s}")
    if slurm.time is not None and not _SLURM_TIME.match(str(slurm.time)):
        fail("slurm.time", f"expected Slurm's time format like 24:00:00 or 1-00:00:00, got {slurm.time!r}")
    if slurm.signal is not None and not _SLURM_SIGNAL.match(str(slurm.signal)):
        fail("slurm.signal", f"expected Slurm's --signal format like USR1@120, got {slurm.signal!r}")
    if cfg.supervision.gpus:
        fail("supervision.gpus", "must be 0 with backend: slurm (ask Slurm for GPUs with slurm.gpus_per_node)")
    # Lightning's SLURMEnvironment checks SLURM_NTASKS against devices x num_nodes and refuses a mismatch
    # only after the allocation started: say it at submit instead.
    for trainer_key, slurm_key in (("num_nodes", "nodes"), ("devices", "ntasks_per_node")):
        value = cfg.trainer.get(trainer_key)
        if value is None:
            cfg.trainer[trainer_key] = int(slurm[slurm_key])
        elif value != slurm[slurm_key]:
            fail(f"slurm.{slurm_key}", f"is {slurm[slurm_key]} but trainer.{trainer_key} is {value!r}: "
                 f"they must be equal (Lightning starts {slurm_key.replace('_', ' ')} ranks from Slurm's tasks)")


def _kind(value: Any) -> str:
    return "mapping" if isinstance(value, DictConfig) else "list"


def cli_hint(key: str | None, override_keys: set[str], from_cli: bool) -> str:
    """`` (set on the command line)`` when the problem at ``key`` comes from an override, else nothing."""
    if from_cli or (key is not None and key in override_keys):
        return " (set on the command line)"
    return ""
