"""Templates and knobs: what a template may declare, what a launch request may set, and the overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from supervisor.config import load_job_config
from supervisor.web.templates import (
    Knob,
    KnobError,
    find_template,
    find_templates,
    forbidden_key_reason,
    load_template,
    plan_launch,
    to_override,
)
from tests.web.conftest import fake_template

REPO = Path(__file__).resolve().parents[2]


def _write(folder: Path, name: str, config: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _with_knobs(*knobs: dict[str, Any], **init_args: Any) -> dict[str, Any]:
    return fake_template(knobs=list(knobs), **init_args)


def test_find_lists_only_configs_with_a_ui_section(tmp_path: Path) -> None:
    _write(tmp_path, "fake", fake_template())
    plain = fake_template()
    del plain["ui"]
    _write(tmp_path, "plain", plain)
    (tmp_path / "daemon.yaml").write_text("tick_interval: 1\n")
    (tmp_path / "notes.txt").write_text("ui: {}\n")
    (tmp_path / "broken.yaml").write_text("ui: [unclosed\n")
    assert [t.name for t in find_templates(tmp_path)] == ["fake"]
    assert find_templates(tmp_path / "missing") == []


def test_knobs_take_their_defaults_from_the_config(tmp_path: Path) -> None:
    template = load_template(_write(tmp_path, "fake", fake_template(steps=40)))
    assert template.error is None and template.title == "Fake trainer"
    by_key = {k.key: k for k in template.knobs}
    assert by_key["model.init_args.steps"].default == 40
    assert by_key["model.init_args.steps"].type == "int"
    assert by_key["model.init_args.step_time"].default == 0.01
    assert by_key["supervision.budget"].default == "1h"
    assert by_key["checkpoint.filename"].default == "{epoch}-{step}"  # the schema's default
    assert by_key["model.init_args.check_error"].default is None
    assert by_key["model.init_args.check_error"].as_dict()["labels"] == ["passes", "fails"]


def test_the_bundled_digits_template_is_valid() -> None:
    template = find_template(REPO / "configs", "digits")
    assert template is not None and template.error is None, template and template.error
    keys = [k.key for k in template.knobs]
    assert "model.init_args.lr" in keys and "trainer.max_epochs" in keys
    # every declared choice of every knob passes the job schema: the i-th choices of all knobs in one load
    # (a failure names its key), so the number of loads is the longest list of choices, not their sum
    for i in range(max(len(k.choices) for k in template.knobs)):
        load_job_config(template.path, [to_override(k.key, k.choices[i]) for k in template.knobs if i < len(k.choices)])


@pytest.mark.parametrize("knob, problem", [
    ({"key": "model.class_path", "choices": ["a.B"]}, "model.class_path: a class_path cannot be set"),
    ({"key": "callbacks.extra", "type": "str"}, "callbacks.extra: cannot be set from the web page"),
    ({"key": "python", "choices": ["/bin/sh"]}, "python: python cannot be set from the web page"),
    ({"key": "workdir", "type": "str"}, "workdir: workdir cannot be set"),
    ({"key": "env.LD_PRELOAD", "type": "str"}, "env.LD_PRELOAD: env cannot be set"),
    ({"key": "logger.wandb.dir", "type": "str"}, "cannot be set from the web page"),
    ({"key": "model.init_args[0]", "type": "int"}, "key must be a dotted config key"),
    ({"key": "model.init_args.lr", "choices": []}, "choices must be a non-empty list"),
    ({"key": "model.init_args.lr", "choices": [[1, 2]]}, "choices must be single values"),
    ({"key": "model.init_args.lr", "choices": ["$HOME"]}, "'$' (an interpolation) is not allowed"),
    ({"key": "model.init_args.lr", "choices": [0.1, 0.2], "labels": ["a"]}, "labels must be a list of 2 texts"),
    ({"key": "model.init_args.steps", "type": "int", "min": 50}, "the default 20 does not fit: must be at least 50"),
    ({"key": "model.init_args.step_time", "choices": [0.5, 1.0]}, "the default 0.01 does not fit: must be one of"),
    ({"key": "model.init_args.steps", "type": "complex"}, "type must be one of int, float, bool, str"),
    ({"key": "model.init_args.nothing"}, "declare choices or a type"),
    ({"key": "model.init_args.steps", "lable": "typo"}, "unknown field 'lable'"),
    ({"key": "checkpoint.filename", "type": "str", "pattern": ".*"}, "pattern must not allow '$'"),
    ({"key": "checkpoint.filename", "type": "str", "min": 1}, "min, max and step are for int and float knobs"),
    ({"key": "model.init_args.steps", "choices": ["many"], "type": "int"}, "choice 'many' is not of type int"),
])
def test_a_bad_knob_makes_the_template_invalid_with_one_line(tmp_path: Path, knob: dict[str, Any],
                                                             problem: str) -> None:
    template = load_template(_write(tmp_path, "bad", _with_knobs(knob)))
    assert template.error is not None and problem in template.error, template.error
    assert template.error.startswith(str(tmp_path / "bad.yaml") + ": ui.knobs[0]")
    assert "\n" not in template.error


def test_a_knob_for_an_unknown_config_key_is_caught_when_listed(tmp_path: Path) -> None:
    template = load_template(_write(tmp_path, "bad", _with_knobs(
        {"key": "checkpoint.monitr", "choices": [None, "val_loss"]})))
    assert template.error == f"{tmp_path / 'bad.yaml'}: checkpoint.monitr: unknown key (set on the command line)"


def test_duplicate_knobs_and_unknown_ui_keys_are_refused(tmp_path: Path) -> None:
    knob = {"key": "model.init_args.steps", "type": "int"}
    assert "declared twice" in (load_template(_write(tmp_path, "a", _with_knobs(knob, knob))).error or "")
    config = fake_template()
    config["ui"]["colour"] = "blue"
    assert "ui.colour: unknown key" in (load_template(_write(tmp_path, "b", config)).error or "")


def test_an_invalid_config_is_listed_with_its_schema_error(tmp_path: Path) -> None:
    config = fake_template()
    config["supervision"]["budget"] = "soon"
    template = load_template(_write(tmp_path, "bad", config))
    assert template.error is not None and template.error.startswith(f"{tmp_path / 'bad.yaml'}: supervision.budget:")


@pytest.mark.parametrize("key", ["model.class_path", "data.class_path", "python", "workdir", "env.PATH",
                                 "ui.title", "callbacks.extra", "logger.wandb.run_id"])
def test_forbidden_keys(key: str) -> None:
    assert forbidden_key_reason(key)


@pytest.mark.parametrize("key", ["model.init_args.lr", "trainer.max_epochs", "checkpoint.filename",
                                 "callbacks.early_stopping.monitor", "supervision.budget", "name"])
def test_allowed_keys(key: str) -> None:
    assert forbidden_key_reason(key) is None


def test_coerce_accepts_only_declared_choices_and_returns_the_declared_value() -> None:
    knob = Knob(key="k", label="k", type="choice", default=0.01, choices=(0.01, 1.0, None, "val_loss", True))
    assert knob.coerce(1) == 1.0 and isinstance(knob.coerce(1), float)
    assert knob.coerce(None) is None
    assert knob.coerce("val_loss") == "val_loss"
    assert knob.coerce(True) is True
    for bad in ("0.01", 0.02, False, "VAL_LOSS", [0.01], {"a": 1}):
        with pytest.raises(KnobError, match="must be one of"):
            knob.coerce(bad)
    one = Knob(key="k", label="k", type="choice", default=1, choices=(1, 2))
    with pytest.raises(KnobError):
        one.coerce(True)  # True == 1 in Python, not here


def test_coerce_numbers_ranges_and_text() -> None:
    epochs = Knob(key="k", label="k", type="int", default=5, minimum=1, maximum=100)
    assert epochs.coerce(7) == 7 and epochs.coerce(7.0) == 7 and isinstance(epochs.coerce(7.0), int)
    for bad, problem in ((0, "at least 1"), (101, "at most 100"), (2.5, "whole number"), ("7", "a number"),
                         (True, "a number"), (float("nan"), "finite")):
        with pytest.raises(KnobError, match=problem):
            epochs.coerce(bad)
    lr = Knob(key="k", label="k", type="float", default=0.1, minimum=0.0)
    assert lr.coerce(1) == 1.0 and isinstance(lr.coerce(1), float)
    text = Knob(key="k", label="k", type="str", default="x")
    assert text.coerce("{epoch}-{val_loss:.3f}") == "{epoch}-{val_loss:.3f}"
    for bad in ("${oc.env:HOME}", "../../etc/passwd", "a\nb", 'say "hi"', 3):
        with pytest.raises(KnobError):
            text.coerce(bad)
    flag = Knob(key="k", label="k", type="bool", default=False)
    assert flag.coerce(True) is True
    with pytest.raises(KnobError):
        flag.coerce(1)


@pytest.mark.parametrize("value", [None, True, False, 0, 7, -3, 0.001, 1e-5, 3e-4, 1.0, 2.5e10, "5m", "24h",
                                   "{epoch}-{step}", "{epoch}-{val_loss:.3f}", "val_loss", "a: b", "null", "true",
                                   "1e-3", "[x]", "it's", "#tag"])
def test_an_override_reads_back_as_exactly_the_value(value: Any) -> None:
    item = to_override("model.init_args.v", value)
    parsed = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
    assert isinstance(parsed, dict)
    got = parsed["model"]["init_args"]["v"]
    assert got == value and type(got) is type(value), (item, got)


def test_plan_refuses_keys_that_are_not_knobs_and_keeps_defaults(tmp_path: Path) -> None:
    template = load_template(_write(tmp_path, "fake", fake_template()))
    plan = plan_launch(template, {"model.init_args.steps": 50, "model.class_path": "os.system",
                                  "trainer.max_epochs": 3})
    assert plan.errors == {"model.class_path": "a class_path cannot be set from the web page",
                           "trainer.max_epochs": "not a knob of template fake"}
    plan = plan_launch(template, {"model.init_args.steps": 50, "supervision.budget": "5m"})
    assert plan.errors == {}
    assert plan.overrides == ["model.init_args.steps=50", "model.init_args.step_time=0.01",
                              'supervision.budget="5m"', 'checkpoint.filename="{epoch}-{step}"',
                              "model.init_args.check_error=null"]
    cfg = load_job_config(template.path, plan.overrides)
    assert cfg.model.init_args.steps == 50 and cfg.supervision.budget == "5m"
    assert cfg.model.class_path == "fake.Model"


def test_plan_reports_every_bad_value_by_key(tmp_path: Path) -> None:
    template = load_template(_write(tmp_path, "fake", fake_template()))
    plan = plan_launch(template, {"model.init_args.steps": 0, "supervision.budget": "1y",
                                  "checkpoint.filename": "${oc.env:WANDB_API_KEY}"})
    assert set(plan.errors) == {"model.init_args.steps", "supervision.budget", "checkpoint.filename"}
    assert plan.errors["model.init_args.steps"] == "must be at least 1; got 0"
    assert plan.errors["supervision.budget"] == 'must be one of "5m", "1h", "24h"; got "1y"'
    assert "'$' is not allowed" in plan.errors["checkpoint.filename"]


def test_an_edited_template_is_read_again(tmp_path: Path) -> None:
    config = fake_template()
    _write(tmp_path, "fake", config)
    assert find_templates(tmp_path)[0].title == "Fake trainer"
    config["ui"]["title"] = "Renamed"
    _write(tmp_path, "fake", config)
    assert find_templates(tmp_path)[0].title == "Renamed"
    del config["ui"]
    _write(tmp_path, "fake", config)
    assert find_templates(tmp_path) == []
