"""Hostile configs: YAML bombs, deep nesting, literal names, checkpoint filename patterns, secrets.

Each case failed before the fix it guards: a bomb took tens of seconds (and the
memory to match), deep nesting escaped as ``RecursionError``, a ``--name`` was
resolved as an interpolation, and a filename pattern reached ``str.format``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import load_job_config, name_override, parse_job_config
from supervisor.config.patterns import checkpoint_filename_problem
from supervisor.config.safe_yaml import MAX_BYTES, MAX_DEPTH, MAX_EXPANDED_NODES, MAX_INTERPOLATION_DEPTH
from supervisor.core.submit import SubmitRequest, load_request_config
from supervisor.errors import ConfigError

BASE = "name: digits\nmodel: {class_path: pkg.models.Net}\ndata: {class_path: pkg.data.Digits}\n"

# The "billion laughs": 9 levels of 9 aliases, under 500 bytes, 9**9 values when copied out.
BOMB = "\n".join(
    ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
)


def error_of(text: str, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_job_config(text, source="job.yaml", overrides=overrides or [])
    message = info.value.message
    assert "\n" not in message and message.startswith("job.yaml: ")
    return message.removeprefix("job.yaml: ")


@pytest.mark.timeout(20)
def test_an_alias_bomb_is_refused_at_once() -> None:
    assert len(BOMB) < 500
    assert error_of(BASE + "ui:\n  " + BOMB.replace("\n", "\n  ") + "\n") == (
        f"invalid YAML: aliases expand to more than {MAX_EXPANDED_NODES} values")


@pytest.mark.timeout(20)
def test_an_alias_bomb_in_an_override_value_is_refused() -> None:
    value = "[" + ", ".join(["&a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]) + "]"
    assert error_of(BASE, [f"ui.bomb={value}"]) == (
        f"ui.bomb: cannot parse the value: aliases expand to more than {MAX_EXPANDED_NODES} values "
        "(set on the command line)")


def test_an_alias_that_contains_itself_is_refused() -> None:
    assert error_of(BASE + "ui: &loop {self: *loop}\n") == "invalid YAML: an alias refers to a node that contains it"


def test_a_few_ordinary_aliases_still_work() -> None:
    cfg = parse_job_config(BASE + "ui: {base: &b {lr: 0.1, width: 8}, copy: *b}\n", source="job.yaml")
    assert dict(cfg.ui["copy"]) == {"lr": 0.1, "width": 8}


@pytest.mark.parametrize("text", [
    BASE + "ui: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n",  # flow style: PyYAML's composer recursed
    BASE + "ui: " + "[" * 100_000 + "]" * 100_000 + "\n",
    BASE + "ui:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200)),  # block style
], ids=["flow-mapping", "flow-list-100k", "block"])
def test_deep_nesting_is_one_line_not_a_recursion_error(text: str) -> None:
    assert error_of(text) == f"invalid YAML: nested more than {MAX_DEPTH} levels deep"


def test_nesting_within_the_limit_loads() -> None:
    depth = MAX_DEPTH - 5
    cfg = parse_job_config(BASE + "ui: " + "{a: " * depth + "1" + "}" * depth + "\n", source="job.yaml")
    node = cfg.ui
    for _ in range(depth - 1):
        node = node.a
    assert node.a == 1


def test_a_deep_override_key_is_refused() -> None:
    key = "ui." + ".".join(["k"] * (MAX_DEPTH + 10))
    assert f"a key nested more than {MAX_DEPTH} levels deep" in error_of(BASE, [f"{key}=1"])


def test_a_file_over_the_size_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(BASE + "ui: {pad: '" + "x" * MAX_BYTES + "'}\n")
    with pytest.raises(ConfigError) as info:
        load_job_config(path)
    assert info.value.message == f"{path}: the file is larger than {MAX_BYTES // 1024} KiB"


@pytest.mark.timeout(20)
def test_a_deeply_nested_interpolation_is_refused_before_omegaconf_parses_it() -> None:
    """Before: OmegaConf's grammar recursed 3 000 times, for seconds, into a RecursionError."""
    assert error_of(BASE + "ui: {x: '" + "${" * 3000 + "name" + "}" * 3000 + "'}\n") == (
        f"ui.x: interpolations nested more than {MAX_INTERPOLATION_DEPTH} deep")
    assert error_of(BASE, ["ui.y=" + "${" * 50 + "name" + "}" * 50]) == (
        f"ui.y: cannot parse the value: interpolations nested more than {MAX_INTERPOLATION_DEPTH} deep "
        "(set on the command line)")
    cfg = parse_job_config(BASE + "ui: {a: name, x: '${oc.select:${ui.a},y}'}\n", source="job.yaml")
    assert cfg.ui.x == "digits"  # two levels: ordinary


# -- item 1: names are literals -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["${oc.env:ML_SUPERVISOR_TEST_SECRET}", "${${oc.env:ML_SUPERVISOR_TEST_SECRET}}",
                                  "x${oc.env:ML_SUPERVISOR_TEST_SECRET}", "a b", "", "-lead", "x" * 65])
def test_a_name_is_a_literal_never_resolved(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ML_SUPERVISOR_TEST_SECRET", "hunter2-secret")
    with pytest.raises(ConfigError) as info:
        name_override(name, "job.yaml")
    assert info.value.key == "name" and "hunter2" not in info.value.message
    if name:  # an empty --name means "the config's name"
        with pytest.raises(ConfigError) as info:
            load_request_config(SubmitRequest(config_path="job.yaml", cwd="/", config_text=BASE, name=name))
        assert info.value.key == "name" and "hunter2" not in info.value.message


def test_a_name_that_looks_like_a_number_stays_text() -> None:
    cfg = load_request_config(SubmitRequest(config_path="job.yaml", cwd="/", config_text=BASE, name="1e3"))
    assert cfg.name == "1e3"


# -- item 2: checkpoint filename patterns ---------------------------------------------------------
@pytest.mark.parametrize("pattern", [
    "{epoch}-{step}", "{epoch:02d}-{val_loss:.4f}", "best-{val/acc:.3f}", "{train.loss:>8.3e}", "plain", "{step:_}",
])
def test_plain_filename_patterns_are_accepted(pattern: str) -> None:
    assert checkpoint_filename_problem(pattern) is None
    assert parse_job_config(BASE, source="job.yaml", overrides=[f"checkpoint.filename={pattern}"]) is not None


@pytest.mark.parametrize(("pattern", "problem"), [
    ("{epoch].__repr__.__globals__[os].environ[KEY}",
     "{epoch].__repr__.__globals__[os].environ[KEY...}: a field must name a metric"),
    ("{epoch:099999999999}", "{epoch:099999999999}: the format spec must be a plain one"),
    ("{epoch:{step}}", "braces only around a field"),
    ("{epoch!r}", "{epoch!r...}: a field must name a metric"),
    ("{}", "{...}: a field must name a metric"),
    ("{epoch", "braces only around a field"),
    ("epoch}", "braces only around a field"),
    ("x" * 201, "at most 200 characters"),
])
def test_filename_patterns_that_reach_into_objects_or_memory_are_refused(pattern: str, problem: str) -> None:
    found = checkpoint_filename_problem(pattern)
    assert found is not None and found.startswith(problem), found
    assert error_of(BASE, [f"checkpoint.filename={pattern}"]).startswith(f"checkpoint.filename: {problem}")


# -- item 4: secrets in configs -------------------------------------------------------------------
def test_the_public_config_hides_env_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.config.public import public_config

    monkeypatch.setenv("ML_SUPERVISOR_TEST_SECRET", "hunter2-secret")
    cfg = parse_job_config(BASE + "env: {API_KEY: plain-secret, FROM_ENV: '${oc.env:ML_SUPERVISOR_TEST_SECRET}'}\n"
                           "logger: {wandb: {entity: '${oc.env:ML_SUPERVISOR_TEST_SECRET}'}}\n", source="job.yaml")
    shown = public_config(cfg)
    assert shown["env"] == {"API_KEY": "<set>", "FROM_ENV": "<set>"}
    assert shown["logger"]["wandb"]["entity"] == "${oc.env:ML_SUPERVISOR_TEST_SECRET}"
    assert "secret" not in repr({k: v for k, v in shown.items() if k != "logger"}).replace("SECRET", "")
    assert "hunter2" not in repr(shown) and "plain-secret" not in repr(shown)
    assert shown["name"] == "digits" and shown["model"]["class_path"] == "pkg.models.Net"
