"""Property tests of the config loader: no YAML text and no override yields anything but a config or one
``ConfigError`` line (no traceback, no hang). Bounded: a few hundred examples, seconds in all."""

from __future__ import annotations

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig

from supervisor.config import parse_job_config
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
