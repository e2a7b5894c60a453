"""Property tests of the config loader: no YAML text and no override yields anything but a config or one
``ConfigError`` line (no traceback, no hang); a config that loads reads back from its frozen copy unchanged;
an override changes exactly the key it names. Bounded: a few hundred examples, seconds in all."""

from __future__ import annotations

import functools
import string

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from supervisor.config import parse_job_config, to_yaml
from supervisor.errors import ConfigError

BASE = {"name": "j", "model": {"class_path": "a.B"}, "data": {"class_path": "a.C"}}
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = st.sampled_from(["name", "model", "data", "trainer", "checkpoint", "logger", "callbacks", "supervision",
                        "env", "ui", "seed", "workdir", "python", "class_path", "init_args", "filename",
                        "budget", "max_epochs", "alerts", "extra", "wandb", "x", "<<"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["${oc.env:HOME}", "${name}", "${a.b}", "${", "\\${x}", "{epoch}", "24h",
                                     "???", "${oc.env:NOPE_X,1}", "{epoch:099999}", "1e400"]))
TREES = st.recursive(SCALARS, lambda children: st.one_of(st.lists(children, max_size=4),
                                                          st.dictionaries(KEYS, children, max_size=4)),
                     max_leaves=25)


def loads_or_one_line(text: str, overrides: list[str]) -> None:
    try:
        cfg = parse_job_config(text, source="job.yaml", overrides=overrides)
    except ConfigError as exc:
        assert exc.message.startswith("job.yaml: ") and "\n" not in exc.message, exc.message
        assert "Traceback" not in exc.message
        return
    assert isinstance(cfg, DictConfig)


@SETTINGS
@given(st.text(alphabet=string.printable + "&*!|>[]{}#", max_size=300))
def test_any_text_is_a_config_or_one_line(text: str) -> None:
    loads_or_one_line(text, [])


@SETTINGS
@given(st.dictionaries(KEYS, TREES, max_size=6))
def test_any_mapping_merged_into_a_valid_config_is_a_config_or_one_line(extra: dict[str, object]) -> None:
    try:
        text = yaml.safe_dump({**BASE, **extra}, allow_unicode=True)
    except (yaml.YAMLError, ValueError, OverflowError):
        return
    loads_or_one_line(text, [])


OVERRIDE_KEYS = st.one_of(
    st.sampled_from(["name", "trainer.max_epochs", "checkpoint.filename", "supervision.budget", "env.X", "ui.a.b",
                     "model.init_args.lr", "+ui.new", "~ui", "callbacks.extra[0].class_path", "logger.wandb.tags",
                     "a..b", "", ".", "[0]", "ui." + ".".join(["k"] * 80)]),
    st.text(alphabet=string.ascii_letters + "._[]0+~$", max_size=30),
)
OVERRIDE_VALUES = st.one_of(st.text(max_size=40), st.sampled_from([
    "${oc.env:HOME}", "[1, 2", "{a: 1}", "{epoch}-{step}", "&a [*a]", "null", "1e400", "${${oc.env:HOME}}",
    "[" * 200 + "]" * 200, "{epoch].__repr__.__globals__}", "'quoted'", '"x"']))


@SETTINGS
@given(st.lists(st.tuples(OVERRIDE_KEYS, OVERRIDE_VALUES), max_size=4), st.booleans())
def test_any_overrides_are_a_config_or_one_line(pairs: list[tuple[str, str]], no_equals: bool) -> None:
    overrides = [f"{key}={value}" for key, value in pairs]
    if no_equals and pairs:
        overrides.append(pairs[0][0])
    loads_or_one_line(yaml.safe_dump(BASE), overrides)


# -- what a loaded config means ----------------------------------------------------------------------
def _flat(node: object, prefix: str = "") -> dict[str, object]:
    """A container as {dotted path: leaf} (an empty mapping or list is a leaf of its own)."""
    if isinstance(node, dict) and node:
        return {k: v for key, child in node.items() for k, v in _flat(child, f"{prefix}{key}.").items()}
    if isinstance(node, list) and node:
        return {k: v for i, child in enumerate(node) for k, v in _flat(child, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): node}


IDENTIFIERS = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)
# Values a user's config holds where the schema leaves them free (model/data init_args, trainer): what YAML,
# OmegaConf and the freezing each read in their own way (escaped and live interpolations, YAML 1.1 words,
# special floats, big integers, line breaks).
FREE_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
              st.sampled_from(["\\${x}", "\\${name}", "${name}", "${oc.env:HOME}", "${oc.env:NOPE_X,1}", "yes",
                               "on", "~", "null", "1e3", "0x10", "'q'", "a: b", "- x", "{epoch}-{step}", "$", "${",
                               "line\nbreak", " padded ", "\\\\${x}", "???"])),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(IDENTIFIERS, children, max_size=3)),
    max_leaves=10)


@settings(SETTINGS, max_examples=100)  # two loads per example: a loaded box takes a tenth of a second each
@given(st.dictionaries(IDENTIFIERS, FREE_VALUES, max_size=5), st.dictionaries(IDENTIFIERS, FREE_VALUES, max_size=3),
       st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True), st.text(max_size=12), max_size=2))
def test_a_config_that_loads_reads_back_from_its_frozen_copy_unchanged(
        init_args: dict[str, object], trainer: dict[str, object], env: dict[str, str]) -> None:
    """The job directory's config.yaml (``to_yaml``) is what every attempt runs with: read again, it is the
    same config, and freezing it again writes the same text."""
    raw = {**BASE, "model": {"class_path": "a.B", "init_args": init_args}, "trainer": trainer, "env": env}
    try:
        cfg = parse_job_config(yaml.safe_dump(raw, allow_unicode=True), source="job.yaml")
    except (ConfigError, yaml.YAMLError, ValueError, OverflowError):
        return
    frozen = to_yaml(cfg)
    again = parse_job_config(frozen, source="config.yaml")
    assert to_yaml(again) == frozen
    assert repr(OmegaConf.to_container(again, resolve=False)) == repr(OmegaConf.to_container(cfg, resolve=False))


NAMED_OVERRIDES = st.one_of(
    st.tuples(st.sampled_from(["trainer.max_epochs", "trainer.max_steps", "supervision.max_restarts",
                               "supervision.no_progress_attempts", "checkpoint.save_top_k", "seed",
                               "model.init_args.hidden", "data.init_args.batch_size"]),
              st.integers(min_value=1, max_value=10**6)),
    st.tuples(st.sampled_from(["model.init_args.lr", "callbacks.early_stopping.min_delta"]),
              st.floats(min_value=1e-9, max_value=1e3, allow_nan=False)),
    st.tuples(st.sampled_from(["supervision.budget", "supervision.stop_grace", "supervision.restart_window"]),
              st.tuples(st.integers(min_value=1, max_value=999), st.sampled_from(["s", "m", "h"]))
              .map(lambda nu: f"{nu[0]}{nu[1]}")),
    st.tuples(st.sampled_from(["name", "logger.wandb.project", "env.MY_VAR", "checkpoint.monitor"]),
              st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)),
    st.tuples(st.sampled_from(["checkpoint.save_last", "callbacks.lr_monitor", "checkpoint.save_weights_only"]),
              st.booleans()),
)


OVERRIDDEN = yaml.safe_dump({**BASE, "model": {"class_path": "a.B", "init_args": {"lr": 0.1, "hidden": 8}}})


@functools.cache
def _plain() -> dict[str, object]:
    return _flat(OmegaConf.to_container(parse_job_config(OVERRIDDEN, source="job.yaml"), resolve=False))


@settings(SETTINGS, max_examples=100)
@given(NAMED_OVERRIDES)
@example(("name", "no"))  # YAML 1.1 booleans ("no", "on", "y") typed for a string field stay text
@example(("env.MY_VAR", "off"))
def test_an_override_changes_exactly_the_key_it_names(override: tuple[str, object]) -> None:
    key, value = override
    text, plain = OVERRIDDEN, _plain()
    written = str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, float) else value
    changed = _flat(OmegaConf.to_container(parse_job_config(text, source="job.yaml", overrides=[f"{key}={written}"]),
                                           resolve=False))
    differs = {path for path in plain.keys() | changed.keys() if plain.get(path, "<absent>") != changed.get(path)}
    # an empty section the key lands in (trainer: {}) is a leaf in the flat view of the plain config
    filled = {path for path in differs if plain.get(path) == {} and key.startswith(path + ".")}
    assert differs - filled <= {key}, f"{key}={written} also changed {sorted(differs - filled - {key})}"
    assert changed[key] == value
