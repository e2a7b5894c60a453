"""Load a job config: YAML file + ``key=value`` overrides, merged with OmegaConf -> validated, resolved config.

Every problem becomes one ``ConfigError`` line naming the file and the key;
nothing here raises a traceback at a user. The checks themselves are in ``validate.py``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

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
from supervisor.config.schema import JobConfig
from supervisor.config.validate import SECTION_TYPES, check_sections, check_values, cli_hint
from supervisor.errors import ConfigError


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
    check_sections(raw, JobConfig, "", source)
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
                if _takes_text(key) and _yaml11_bool(value, OmegaConf.select(parsed, key)):
                    # YAML 1.1 reads "no"/"on"/"y" as booleans; a string field means the text typed
                    parsed = OmegaConf.create()
                    OmegaConf.update(parsed, key, value, force_add=True)
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
        check_sections({str(k): v for k, v in container.items()}, JobConfig, "", source, " (set on the command line)")
        cfg = _merge(cfg, dotlist, source, override_keys, True)
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except InterpolationResolutionError as exc:
        failed_key = _key_of(exc)
        raise ConfigError(source, failed_key, f"cannot resolve interpolation: {_first_line(exc)}"
                          + cli_hint(failed_key, override_keys, False)) from None
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
    check_values(resolved, source, override_keys)
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
    """Whether any string in ``node`` holds a live ``${oc.env:...}`` interpolation."""
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
    """``node`` with every ``${`` escaped, so OmegaConf reads it as text."""
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
    """The keys the overrides set (to blame the command line in errors); refuses a malformed override."""
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
    """``OmegaConf.merge``, its errors turned into one ``ConfigError`` line naming the key."""
    try:
        merged = OmegaConf.merge(base, other)
    except ConfigKeyError as exc:
        key = _key_of(exc)
        raise ConfigError(source, key, "unknown key" + cli_hint(key, override_keys, from_cli)) from None
    except ValidationError as exc:
        key = _key_of(exc)
        raise ConfigError(source, key, _type_problem(exc) + cli_hint(key, override_keys, from_cli)) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(source, _key_of(exc), _first_line(exc)) from None
    assert isinstance(merged, DictConfig)
    return merged


def _key_of(exc: OmegaConfBaseException) -> str | None:
    key = getattr(exc, "full_key", None)
    return str(key) if key else None


def _takes_text(key: str) -> bool:
    """Whether ``key`` holds text: a string field of the schema, or an environment variable."""
    return _declared_str(key) or key.startswith("env.")


def _yaml11_bool(typed: str, parsed: object) -> bool:
    """Whether YAML made a boolean of a word YAML 1.2 leaves as text ("no", "on", "y", ...)."""
    return isinstance(parsed, bool) and typed.strip().lower() not in ("true", "false")


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
        target = SECTION_TYPES.get(annotation)
        if target is None:
            return False
        schema = target
    return False


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


