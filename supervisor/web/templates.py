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

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from supervisor.bundled import EXAMPLE_CONFIGS
from supervisor.config import load_job_config
from supervisor.config.safe_yaml import load_yaml, read_config_text
from supervisor.errors import ConfigError
from supervisor.web.knobs import (  # noqa: F401  (re-exported: the app and the tests import them from here)
    DEFAULT_STRING_PATTERN,
    KEY_PATTERN,
    Knob,
    KnobError,
    KnobType,
    Scalar,
    forbidden_key_reason,
    parse_knob,
    parse_ui,
    to_override,
)

TEMPLATE_SUFFIXES = (".yaml", ".yml")
# The default template folder (``web.templates_dir`` unset): the example configs installed with the package
# (package data), so a wheel installed anywhere lists them; in a checkout, the same files (``configs/`` links here).
BUNDLED_TEMPLATES = EXAMPLE_CONFIGS
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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
        title, description, knobs = parse_ui({str(k): v for k, v in ui.items()}, source=str(path),
                                             config_value=lambda key: _select(cfg, key))
        # One load with every knob at its default: unknown keys and wrong types show up now, not at launch.
        load_job_config(path, [to_override(k.key, k.default) for k in knobs])
    except ConfigError as exc:
        return Template(name=name, path=path, title=name, error=exc.message)
    return Template(name=name, path=path, title=title or name, description=description, knobs=tuple(knobs))


def plan_launch(template: Template, values: Mapping[str, Any]) -> LaunchPlan:
    """Check a launch request's values against the template's knobs and build the overrides.

    Keys that are not knobs are refused (the page sends only knobs; anything
    else is a crafted request). Knobs left out keep their defaults.
    """
    plan = LaunchPlan()
    for key in values:
        if template.knob(key) is None:
            reason = forbidden_key_reason(key) if isinstance(key, str) and KEY_PATTERN.match(key) else None
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

