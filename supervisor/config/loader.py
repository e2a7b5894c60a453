"""Load a job config: YAML file + ``key=value`` overrides -> validated, resolved config.

Every problem becomes one ``ConfigError`` line naming the file and the key;
nothing here raises a traceback at a user.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from supervisor.config import schema as _schema
from supervisor.config.durations import parse_duration
from supervisor.config.patterns import JOB_NAME, checkpoint_filename_problem
from supervisor.config.ranks import check_ranks
from supervisor.config.safe_yaml import (
    MAX_DEPTH,
    MAX_INTERPOLATION_DEPTH,
    deepest_interpolation,
    interpolation_depth,
    limit_problem,
    load_yaml,
    read_config_text,
)
from supervisor.config.schema import (
    ALERT_EVENTS,
    BACKENDS,
    MODE_CHOICES,
    RESUME_CHOICES,
    STANDBY_CHOICES,
    WANDB_MODES,
    WATCH_CHOICES,
    JobConfig,
)
from supervisor.errors import ConfigError

_CLASS_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")
_SECTION_TYPES: dict[str, type] = {
    name: obj for name, obj in vars(_schema).items() if isinstance(obj, type) and hasattr(obj, "__dataclass_fields__")
}


def load_job_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Read ``path``, merge ``overrides`` (OmegaConf dotlist) and validate.

    Returns a resolved, typed ``DictConfig`` of ``JobConfig``. Raises
    ``ConfigError`` naming the file and the key on any problem.
    """
    source = str(path)
    text = read_config_text(path)
    return parse_job_config(text, source=source, overrides=overrides)


def parse_job_config(text: str, *, source: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Like ``load_job_config`` for YAML already in memory (``source`` names it in errors)."""
    raw = load_yaml(text, source=source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, None, f"the top level must be a mapping of sections, got {type(raw).__name__}")
    return build_job_config(raw, source=source, overrides=overrides)


def build_job_config(raw: dict[str, Any], *, source: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Validate a plain mapping (already parsed) plus overrides into a resolved ``JobConfig``."""
    try:
        return _build_job_config(raw, source=source, overrides=overrides)
    except RecursionError:
        # OmegaConf recurses per level of nesting (and per nested interpolation): the YAML limits
        # keep files far from Python's stack limit; this keeps the one-line contract for anything else.
        raise ConfigError(source, None, "nested too deeply") from None
    except OmegaConfBaseException as exc:  # what the steps above do not name more precisely (a bad "${")
        raise ConfigError(source, _key_of(exc), _first_line(exc)) from None


def _build_job_config(raw: dict[str, Any], *, source: str, overrides: Sequence[str]) -> DictConfig:
    override_keys = _override_keys(overrides, source)
    where, depth = deepest_interpolation(raw)
    if depth > MAX_INTERPOLATION_DEPTH:
        raise ConfigError(source, where or None, f"interpolations nested more than {MAX_INTERPOLATION_DEPTH} deep")
    _check_sections(raw, JobConfig, "", source)
    cfg = _merge(OmegaConf.structured(JobConfig), OmegaConf.create(raw), source, override_keys, False)
    if overrides:
        # "+key=value" (Hydra's "add a key") means the same as "key=value" here: from_dotlist
        # would take the "+" as part of the key.
        items = [item[1:] if item.startswith("+") else item for item in overrides]
        layers = []
        for item in items:  # one at a time, to name the key whose value does not parse
            _check_override_limits(item, source)
            key, value = item.split("=", 1)
            try:
                parsed = OmegaConf.from_dotlist([item])
                if _declared_str(key) and OmegaConf.is_config(OmegaConf.select(parsed, key)):
                    raise ValidationError("a mapping or list for a string field")  # "{step:_}" is YAML too
                layers.append(parsed)
            except (OmegaConfBaseException, yaml.YAMLError) as exc:  # the value is parsed as YAML
                if _declared_str(key):
                    # A string field takes the text as typed: Lightning's filename patterns
                    # ("{epoch}-{step}") are not valid YAML, and nobody should have to quote them.
                    layer = OmegaConf.create()
                    OmegaConf.update(layer, key, value, force_add=True)
                    layers.append(layer)
                    continue
                problem = getattr(exc, "problem", None) or _first_line(exc)
                raise ConfigError(source, key, f"cannot parse the value {value!r}: {problem} "
                                  "(set on the command line)") from None
        dotlist = OmegaConf.merge(*layers)
        container = OmegaConf.to_container(dotlist)
        assert isinstance(container, dict)  # a merge of dotlists is a mapping
        _check_sections({str(k): v for k, v in container.items()}, JobConfig, "", source, " (set on the command line)")
        cfg = _merge(cfg, dotlist, source, override_keys, True)
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except InterpolationResolutionError as exc:
        failed_key = _key_of(exc)
        raise ConfigError(source, failed_key, f"cannot resolve interpolation: {_first_line(exc)}"
                          + _cli_hint(failed_key, override_keys, False)) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(source, _key_of(exc), _first_line(exc)) from None
    # Resolving turned an escaped "\\${...}" into a literal "${...}": escape it again, or the
    # resolved config would read it as an interpolation a second time.
    unresolved = OmegaConf.to_container(cfg, resolve=False)
    if _mentions_env(unresolved):
        # ${oc.env:...} is resolved only where it is used (the trainer; the daemon in memory), never
        # written down: the frozen config.yaml and the W&B run would otherwise hold the secret. Which
        # other interpolations read an env one is not knowable from the text alone, so all stay live.
        container = _keep_interpolations(unresolved, container)
    else:
        container = _escape_interpolations(container)
    resolved = _merge(OmegaConf.structured(JobConfig), OmegaConf.create(container), source, override_keys, False)
    # YAML 1.1 reads a bare on / off as a boolean, which the str field then holds as "True" / "False".
    standby = str(resolved.supervision.standby)
    if standby in ("True", "False"):
        OmegaConf.update(resolved, "supervision.standby", "on" if standby == "True" else "off", force_add=True)
    _check_values(resolved, source, override_keys)
    trainer_args = OmegaConf.to_container(resolved.trainer, resolve=False)
    assert isinstance(trainer_args, dict)
    OmegaConf.set_readonly(resolved, False)
    resolved.supervision.gpus = check_ranks(trainer_args, resolved.supervision.gpus, source,
                                           str(resolved.supervision.backend))
    return resolved


def to_yaml(cfg: DictConfig) -> str:
    """The YAML text of a resolved config, as frozen into a job directory.

    Not re-resolved: every interpolation is already resolved, and what remains are
    escaped literals that must stay escaped when the file is read again, except
    in a config that reads the environment (``${oc.env:...}``): there the
    interpolations stay as written, for the trainer to resolve in its own process.
    """
    return OmegaConf.to_yaml(cfg, resolve=False)


_LIVE_INTERPOLATION = re.compile(r"(?<!\\)\$\{")


def _mentions_env(node: Any) -> bool:
    if isinstance(node, str):
        return "oc.env" in node and bool(_LIVE_INTERPOLATION.search(node))
    if isinstance(node, dict):
        return any(_mentions_env(v) for v in node.values())
    if isinstance(node, list):
        return any(_mentions_env(v) for v in node)
    return False


def _keep_interpolations(unresolved: Any, resolved: Any) -> Any:
    """``resolved``, except that every value written as an interpolation keeps its ``${...}`` text."""
    if isinstance(unresolved, str) and _LIVE_INTERPOLATION.search(unresolved):
        return unresolved
    if isinstance(unresolved, dict) and isinstance(resolved, dict):
        return {k: _keep_interpolations(unresolved[k], v) if k in unresolved else _escape_interpolations(v)
                for k, v in resolved.items()}
    if isinstance(unresolved, list) and isinstance(resolved, list) and len(unresolved) == len(resolved):
        return [_keep_interpolations(u, v) for u, v in zip(unresolved, resolved, strict=True)]
    return _escape_interpolations(resolved)


def _escape_interpolations(node: Any) -> Any:
    if isinstance(node, str):
        return node.replace("${", "\\${")
    if isinstance(node, dict):
        return {k: _escape_interpolations(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_escape_interpolations(v) for v in node]
    return node


def _check_override_limits(item: str, source: str) -> None:
    """An override's value is YAML too: the same limits as a file (an alias bomb fits on one line)."""
    key, value = item.split("=", 1)
    if key.count(".") + key.count("[") >= MAX_DEPTH:
        raise ConfigError(source, key[:80], f"a key nested more than {MAX_DEPTH} levels deep (set on the command line)")
    problem = limit_problem(value)
    if problem is None and interpolation_depth(value) > MAX_INTERPOLATION_DEPTH:
        problem = f"interpolations nested more than {MAX_INTERPOLATION_DEPTH} deep"
    if problem is not None:
        raise ConfigError(source, key, f"cannot parse the value: {problem} (set on the command line)")


_OVERRIDE_KEY = re.compile(r"[A-Za-z_][\w-]*(?:\.[\w-]+)*")


def _override_keys(overrides: Sequence[str], source: str) -> set[str]:
    keys = set()
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" not in item or not key:
            raise ConfigError(source, None, f"override {item!r} must look like key=value")
        if not _OVERRIDE_KEY.fullmatch(key):  # OmegaConf's dotlist parser fails with an IndexError on "["
            raise ConfigError(source, None, f"override {item!r}: the key must be a dotted name like trainer.max_epochs")
        keys.add(key)
    return keys


def _merge(base: DictConfig, other: Any, source: str, override_keys: set[str], from_cli: bool) -> DictConfig:
    try:
        merged = OmegaConf.merge(base, other)
    except ConfigKeyError as exc:
        key = _key_of(exc)
        raise ConfigError(source, key, "unknown key" + _cli_hint(key, override_keys, from_cli)) from None
    except ValidationError as exc:
        key = _key_of(exc)
        raise ConfigError(source, key, _type_problem(exc) + _cli_hint(key, override_keys, from_cli)) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(source, _key_of(exc), _first_line(exc)) from None
    assert isinstance(merged, DictConfig)
    return merged


def _check_values(cfg: DictConfig, source: str, override_keys: set[str]) -> None:
    """The checks a type cannot express. Raises on the first problem, naming its key."""

    def fail(key: str, problem: str) -> None:
        raise ConfigError(source, key, problem + _cli_hint(key, override_keys, key in override_keys))

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
    at_least("checkpoint.every_n_train_steps", 1, allow_none=True)
    at_least("checkpoint.every_n_epochs", 1, allow_none=True)
    at_least("callbacks.early_stopping.patience", 0)
    at_least("logger.wandb.watch_log_freq", 1)
    at_least("callbacks.log_samples_count", 1)
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
    if slurm.gpus_per_node < 0:
        fail("slurm.gpus_per_node", f"must be at least 0; got {slurm.gpus_per_node}")
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


def _key_of(exc: OmegaConfBaseException) -> str | None:
    key = getattr(exc, "full_key", None)
    return str(key) if key else None


def _declared_str(key: str) -> bool:
    """Whether the schema declares ``key`` (a dotted path) as a string field."""
    schema: type = JobConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        field = next((f for f in fields(schema) if f.name == part), None)
        if field is None:
            return False
        annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
        if i == len(parts) - 1:
            return str(field.type).replace("typing.", "") in ("str", "<class 'str'>", "Optional[str]", "str | None")
        target = _SECTION_TYPES.get(annotation)
        if target is None:
            return False
        schema = target
    return False


def _check_sections(raw: dict[str, Any], schema: type, prefix: str, source: str, hint: str = "") -> None:
    """Sections, mappings and lists must be what they are: say so by key.

    OmegaConf's merge names no key for a section given a scalar, and raises a bare
    ``TypeError`` for a mapping given a list or the other way round.
    """
    for f in fields(schema):
        value = raw.get(f.name)
        key = f"{prefix}{f.name}"
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        target = _SECTION_TYPES.get(type_name)
        if value is None:
            continue
        if target is None and isinstance(value, str) and "${" in value:
            continue  # a mapping or list from an interpolation: OmegaConf checks it when it resolves
        if target is not None:
            if not isinstance(value, dict):
                raise ConfigError(source, key, f"must be a mapping (a section), got {type(value).__name__}{hint}")
            _check_sections(value, target, key + ".", source, hint)
        elif type_name.startswith("dict[") and not isinstance(value, dict):
            raise ConfigError(source, key, f"must be a mapping, got {type(value).__name__}{hint}")
        elif type_name.startswith("list["):
            if not isinstance(value, list):
                raise ConfigError(source, key, f"must be a list, got {type(value).__name__}{hint}")
            item_type = _SECTION_TYPES.get(type_name[len("list["):-1])
            for i, item in enumerate(value if item_type is not None else ()):
                if not isinstance(item, dict):
                    raise ConfigError(source, f"{key}[{i}]", f"must be a mapping, got {type(item).__name__}{hint}")
                assert item_type is not None  # the loop runs only when it is set
                _check_sections(item, item_type, f"{key}[{i}].", source, hint)


def _kind(value: Any) -> str:
    return "mapping" if isinstance(value, DictConfig) else "list"


def _type_problem(exc: ValidationError) -> str:
    text = _first_line(exc)
    if "is not a ListConfig" in text:
        return "expected a list"
    if "is not a subclass of" in text or "DictConfig" in text:
        return "expected a mapping"
    return text


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _cli_hint(key: str | None, override_keys: set[str], from_cli: bool) -> str:
    if from_cli or (key is not None and key in override_keys):
        return " (set on the command line)"
    return ""
