"""Launch templates: job configs with a ``ui:`` section that declares the knobs the web page offers.

A template is a YAML job config in the daemon's template folder whose top level
has a ``ui`` mapping::

    ui:
      title: "Digits classifier"
      description: "A small MLP on scikit-learn's 8x8 digits."
      knobs:
        - {key: model.init_args.hidden_size, label: "Hidden size", choices: [32, 64, 128]}
        - {key: trainer.max_epochs, label: "Max epochs", type: int, min: 1, max: 100}
        - {key: callbacks.early_stopping.monitor, label: "Early stopping",
           choices: [null, val_loss], labels: ["off", "on (val_loss)"]}

The page may set only the declared keys, only to a declared choice or a value
in the declared range; everything else in the config stays as the file says.
This is what keeps the page from becoming a remote code runner: a request can
never name a ``class_path``, an interpreter, a working directory or an
environment variable, and a free-text value can never carry an OmegaConf
interpolation (``${oc.env:...}`` would read the daemon's environment).

Everything here is pure (files in, dataclasses out) apart from reading the folder.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf

from supervisor.config import load_job_config
from supervisor.config.safe_yaml import load_yaml, read_config_text
from supervisor.errors import ConfigError

KnobType = Literal["choice", "int", "float", "bool", "str"]
Scalar = None | bool | int | float | str

TEMPLATE_SUFFIXES = (".yaml", ".yml")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Keys no knob may set, whatever choices it declares: they choose what code runs and where.
_FORBIDDEN_ROOTS = ("python", "workdir", "env", "ui")
_FORBIDDEN_PREFIXES = ("callbacks.extra", "logger.wandb.dir", "logger.wandb.run_id")
# Free text without a pattern of its own: no "$" (interpolations), no "/" (paths), no quotes or newlines.
DEFAULT_STRING_PATTERN = r"[A-Za-z0-9 _.,:;=+%@{}()\[\]-]{0,200}"
_KNOB_FIELDS = {"key", "label", "help", "type", "choices", "labels", "min", "max", "step", "pattern", "default"}
_UI_FIELDS = {"title", "description", "knobs"}
_MAX_KNOBS = 64


class KnobError(ValueError):
    """A value the knob does not accept (the message is shown next to the field)."""


@dataclass(frozen=True)
class Knob:
    """One field of the launch form: a config key and the values the page may set it to."""

    key: str
    label: str
    type: KnobType
    default: Scalar
    choices: tuple[Scalar, ...] = ()
    labels: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    pattern: str | None = None
    help: str | None = None

    def coerce(self, value: Any) -> Scalar:
        """The value to put into the config for ``value`` sent by a client, or ``KnobError``.

        For a choice knob the declared choice itself is returned (never the
        client's object), so ``1`` and ``1.0`` both select ``1.0`` but ``true``
        does not select ``1``.
        """
        if self.choices:
            for choice in self.choices:
                if _same_value(choice, value):
                    return choice
            shown = ", ".join(_show(c) for c in self.choices)
            raise KnobError(f"must be one of {shown}; got {_show(value)}")
        if self.type == "bool":
            if not isinstance(value, bool):
                raise KnobError(f"must be true or false; got {_show(value)}")
            return value
        if self.type in ("int", "float"):
            return self._number(value)
        if not isinstance(value, str):
            raise KnobError(f"must be text; got {_show(value)}")
        if "$" in value:
            raise KnobError("'$' is not allowed (it would be read as an interpolation)")
        if not re.fullmatch(self.pattern or DEFAULT_STRING_PATTERN, value):
            raise KnobError(f"{value!r} is not allowed here (allowed: {self.pattern or DEFAULT_STRING_PATTERN})")
        return value

    def _number(self, value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise KnobError(f"must be a number; got {_show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise KnobError(f"must be a finite number; got {value}")
        number: int | float = value
        if self.type == "int":
            if isinstance(value, float) and not value.is_integer():
                raise KnobError(f"must be a whole number; got {value}")
            number = int(value)
        else:
            number = float(value)
        if self.minimum is not None and number < self.minimum:
            raise KnobError(f"must be at least {_show(self.minimum)}; got {_show(number)}")
        if self.maximum is not None and number > self.maximum:
            raise KnobError(f"must be at most {_show(self.maximum)}; got {_show(number)}")
        return number

    def as_dict(self) -> dict[str, Any]:
        """The JSON the page builds its field from."""
        return {
            "key": self.key, "label": self.label, "type": self.type, "default": self.default,
            "choices": list(self.choices), "labels": list(self.labels) or [_label(c) for c in self.choices],
            "min": self.minimum, "max": self.maximum, "step": self.step,
            "pattern": self.pattern or (DEFAULT_STRING_PATTERN if self.type == "str" else None), "help": self.help,
        }


@dataclass(frozen=True)
class Template:
    """A launchable job config. ``error`` set: listed (so its author sees why) but not launchable."""

    name: str
    path: Path
    title: str
    description: str | None = None
    knobs: tuple[Knob, ...] = ()
    error: str | None = None

    def knob(self, key: str) -> Knob | None:
        return next((k for k in self.knobs if k.key == key), None)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.path.name, "title": self.title, "description": self.description,
                "knobs": [k.as_dict() for k in self.knobs], "error": self.error}


@dataclass
class LaunchPlan:
    """What a launch request turns into: overrides for ``op_submit``, or the problems per field."""

    overrides: list[str] = field(default_factory=list)
    values: dict[str, Scalar] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def find_templates(folder: str | Path) -> list[Template]:
    """Every template in ``folder`` (not recursive), sorted by name.

    Files without a top-level ``ui`` mapping are not templates (a daemon
    config may sit in the same folder) and are left out.
    """
    folder = Path(folder)
    try:
        paths = sorted(p for p in folder.iterdir() if p.suffix in TEMPLATE_SUFFIXES and p.is_file())
    except OSError:
        return []
    templates = []
    for path in paths:
        template = _cached_template(path)
        if template is not None:
            templates.append(template)
    return templates


# path -> (mtime_ns, size, inode, template or None): validating a config costs a fraction of a second,
# and the page lists the templates on every visit; an edited file has a new stamp and is read again.
_cache: dict[Path, tuple[tuple[int, int, int], Template | None]] = {}
_cache_lock = threading.Lock()


def _cached_template(path: Path) -> Template | None:
    try:
        info = path.stat()
    except OSError:
        return None
    stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
    with _cache_lock:
        hit = _cache.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    try:
        template = load_template(path) if _declares_ui(path) and _TEMPLATE_NAME.match(path.stem) else None
    except Exception as exc:  # one broken template must never hide the others (or answer 500 for the list)
        template = Template(name=path.stem, path=path, title=path.stem, error=f"{path}: {type(exc).__name__}: {exc}")
    with _cache_lock:
        _cache[path] = (stamp, template)
    return template


def find_template(folder: str | Path, name: str) -> Template | None:
    """The template called ``name`` (its file stem), looked up among those found: never a path join."""
    return next((t for t in find_templates(folder) if t.name == name), None)


def load_template(path: Path) -> Template:
    """Read one template: the whole config validated by the job schema, then its ``ui`` section."""
    name = path.stem
    try:
        cfg = load_job_config(path)
        ui = OmegaConf.to_container(cfg.ui, resolve=True)
        assert isinstance(ui, dict)
        title, description, knobs = parse_ui(ui, source=str(path), config_value=lambda key: _select(cfg, key))
        # One load with every knob at its default: unknown keys and wrong types show up now, not at launch.
        load_job_config(path, [to_override(k.key, k.default) for k in knobs])
    except ConfigError as exc:
        return Template(name=name, path=path, title=name, error=exc.message)
    return Template(name=name, path=path, title=title or name, description=description, knobs=tuple(knobs))


def parse_ui(ui: Mapping[str, Any], *, source: str, config_value: Any) -> tuple[str | None, str | None, list[Knob]]:
    """Validate a ``ui`` mapping; ``config_value(key)`` gives a knob's default when it declares none.

    Raises ``ConfigError`` naming ``ui.knobs[i]`` and the problem.
    """
    unknown = sorted(set(ui) - _UI_FIELDS)
    if unknown:
        raise ConfigError(source, f"ui.{unknown[0]}", f"unknown key (expected {', '.join(sorted(_UI_FIELDS))})")
    title = _optional_text(ui.get("title"), source, "ui.title")
    description = _optional_text(ui.get("description"), source, "ui.description")
    raw_knobs = ui.get("knobs") or []
    if not isinstance(raw_knobs, list):
        raise ConfigError(source, "ui.knobs", "must be a list of knobs")
    if len(raw_knobs) > _MAX_KNOBS:
        raise ConfigError(source, "ui.knobs", f"at most {_MAX_KNOBS} knobs")
    knobs: list[Knob] = []
    for i, raw in enumerate(raw_knobs):
        where = f"ui.knobs[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(source, where, "must be a mapping with at least a key")
        knob = parse_knob(raw, source=source, where=where, config_value=config_value)
        if any(k.key == knob.key for k in knobs):
            raise ConfigError(source, where, f"{knob.key} is declared twice")
        knobs.append(knob)
    return title, description, knobs


def parse_knob(raw: Mapping[str, Any], *, source: str, where: str, config_value: Any) -> Knob:
    """One knob declaration -> ``Knob`` (see the module docstring), or ``ConfigError``."""

    def fail(problem: str) -> ConfigError:
        return ConfigError(source, where, problem)

    unknown = sorted(set(raw) - _KNOB_FIELDS)
    if unknown:
        raise fail(f"unknown field {unknown[0]!r} (expected {', '.join(sorted(_KNOB_FIELDS))})")
    key = raw.get("key")
    if not isinstance(key, str) or not _KEY.match(key):
        raise fail(f"key must be a dotted config key like model.init_args.lr; got {key!r}")
    refusal = forbidden_key_reason(key)
    if refusal:
        raise fail(f"{key}: {refusal}")
    where = f"{where} ({key})"
    label = raw.get("label", key)
    if not isinstance(label, str):
        raise fail("label must be text")
    help_text = _optional_text(raw.get("help"), source, f"{where}.help")
    declared_type = raw.get("type")
    if declared_type is not None and declared_type not in ("int", "float", "bool", "str"):
        raise fail(f"type must be one of int, float, bool, str; got {declared_type!r}")
    choices_raw = raw.get("choices")
    choices: tuple[Scalar, ...] = ()
    labels: tuple[str, ...] = ()
    if choices_raw is not None:
        if not isinstance(choices_raw, list) or not choices_raw:
            raise fail("choices must be a non-empty list")
        for choice in choices_raw:
            if not _is_scalar(choice):
                raise fail(f"choices must be single values (text, numbers, true/false, null); got {choice!r}")
            if isinstance(choice, str) and "$" in choice:
                raise fail(f"choice {choice!r}: '$' (an interpolation) is not allowed")
            if declared_type is not None and choice is not None and not _is_of_type(choice, declared_type):
                raise fail(f"choice {choice!r} is not of type {declared_type}")
        choices = tuple(choices_raw)
        labels_raw = raw.get("labels")
        if labels_raw is not None:
            if not isinstance(labels_raw, list) or len(labels_raw) != len(choices):
                raise fail(f"labels must be a list of {len(choices)} texts, one per choice")
            labels = tuple(str(x) for x in labels_raw)
    elif raw.get("labels") is not None:
        raise fail("labels need choices")
    for bound in ("min", "max", "step"):
        value = raw.get(bound)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise fail(f"{bound} must be a number")
    pattern = raw.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            raise fail("pattern must be a regular expression")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise fail(f"pattern is not a valid regular expression: {exc}") from None
        if re.fullmatch(pattern, "$") or re.fullmatch(pattern, "${x}"):
            raise fail("pattern must not allow '$' (an interpolation)")
    default = raw["default"] if "default" in raw else config_value(key)
    if choices:
        kind: KnobType = "choice"
    elif declared_type is not None:
        kind = declared_type
    elif isinstance(default, bool):
        kind = "bool"
    elif isinstance(default, int):
        kind = "int"
    elif isinstance(default, float):
        kind = "float"
    elif isinstance(default, str):
        kind = "str"
    else:
        raise fail("declare choices or a type (int, float, bool, str): the config has no value to infer it from")
    if kind in ("choice", "bool", "str") and any(raw.get(b) is not None for b in ("min", "max", "step")):
        raise fail("min, max and step are for int and float knobs")
    if pattern is not None and kind != "str":
        raise fail("pattern is for str knobs")
    knob = Knob(key=key, label=label, type=kind, default=None, choices=choices, labels=labels,
                minimum=raw.get("min"), maximum=raw.get("max"), step=raw.get("step"), pattern=pattern,
                help=help_text)
    try:
        checked_default = knob.coerce(default)
    except KnobError as exc:
        raise fail(f"the default {_show(default)} does not fit: {exc}") from None
    return Knob(key=key, label=label, type=kind, default=checked_default, choices=choices, labels=labels,
                minimum=knob.minimum, maximum=knob.maximum, step=knob.step, pattern=pattern, help=help_text)


def forbidden_key_reason(key: str) -> str | None:
    """Why ``key`` may never be a knob (it picks code, an interpreter, a path or the environment), or None."""
    parts = key.split(".")
    if parts[0] in _FORBIDDEN_ROOTS:
        return f"{parts[0]} cannot be set from the web page"
    if "class_path" in parts:
        return "a class_path cannot be set from the web page"
    if any(key == p or key.startswith(p + ".") for p in _FORBIDDEN_PREFIXES):
        return "cannot be set from the web page"
    return None


def plan_launch(template: Template, values: Mapping[str, Any]) -> LaunchPlan:
    """Check a launch request's values against the template's knobs and build the overrides.

    Keys that are not knobs are refused (the page sends only knobs; anything
    else is a crafted request). Knobs left out keep their defaults.
    """
    plan = LaunchPlan()
    for key in values:
        if template.knob(key) is None:
            reason = forbidden_key_reason(key) if isinstance(key, str) and _KEY.match(key) else None
            plan.errors[key] = reason or f"not a knob of template {template.name}"
    for knob in template.knobs:
        try:
            value = knob.coerce(values[knob.key]) if knob.key in values else knob.default
        except KnobError as exc:
            plan.errors[knob.key] = str(exc)
            continue
        plan.values[knob.key] = value
        plan.overrides.append(to_override(knob.key, value))
    return plan


def to_override(key: str, value: Scalar) -> str:
    """An OmegaConf dotlist item that sets ``key`` to exactly ``value``.

    The value is written as YAML the loader reads back unchanged: text is
    double-quoted (JSON strings are YAML), so ``{epoch}-{step}`` stays text
    and ``1e-3`` stays a number.
    """
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise KnobError(f"{key}: must be a finite number")
        text = repr(value)
    elif isinstance(value, str):
        if "$" in value:
            raise KnobError(f"{key}: '$' is not allowed")
        text = json.dumps(value)
    else:
        raise KnobError(f"{key}: must be a single value")
    return f"{key}={text}"


def field_for_error(template: Template, key: str | None) -> str | None:
    """The knob a ``ConfigError`` about ``key`` belongs to (``a.b`` also owns ``a.b.c`` and ``a.b[0]``)."""
    if key is None:
        return None
    for knob in template.knobs:
        if key == knob.key or key.startswith(knob.key + ".") or key.startswith(knob.key + "["):
            return knob.key
    return None


# -- helpers ---------------------------------------------------------------------------------------
def _declares_ui(path: Path) -> bool:
    """Cheap first look (no schema): does the file have a top-level ``ui`` key?"""
    try:
        raw = load_yaml(read_config_text(path), source=str(path))  # bounded: a bomb here would stall the page
    except ConfigError:
        return False
    return isinstance(raw, dict) and "ui" in raw


def _select(cfg: Any, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _optional_text(value: Any, source: str, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(source, key, "must be text")
    return value


def _is_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (bool, int, str))


def _is_of_type(value: Any, type_name: str) -> bool:
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _same_value(choice: Scalar, value: Any) -> bool:
    """Equality without Python's ``True == 1`` and ``"1" != 1`` surprises: numbers match numbers only."""
    if isinstance(choice, bool) or isinstance(value, bool):
        return isinstance(choice, bool) and isinstance(value, bool) and choice == value
    if isinstance(choice, (int, float)) and isinstance(value, (int, float)):
        return choice == value
    return type(choice) is type(value) and choice == value


def _show(value: Any) -> str:
    """A value as the page and the errors write it (JSON: null, true, 0.001, "text")."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _label(choice: Scalar) -> str:
    """The text of a choice without a declared label: text as is, null as "none"."""
    if choice is None:
        return "none"
    return choice if isinstance(choice, str) else _show(choice)
