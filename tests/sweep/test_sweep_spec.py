"""The sweep file: the W&B format parsed and checked, and refused with one line naming the file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from supervisor.errors import ConfigError
from supervisor.sweep.spec import load_sweep_file, override_for

GOOD = {
    "config": "base.yaml",
    "name": "digits-lr-width",
    "method": "bayes",
    "metric": {"name": "val_loss", "goal": "minimize"},
    "run_cap": 20,
    "parallel": 2,
    "seed": 0,
    "parameters": {
        "model.init_args.lr": {"distribution": "log_uniform_values", "min": 0.0001, "max": 0.1},
        "model.init_args.hidden_size": {"values": [32, 64, 128, 256]},
        "model.init_args.dropout": {"min": 0.0, "max": 0.5},
        "model.init_args.layers": {"min": 1, "max": 4},
        "trainer.max_epochs": {"value": 5},
        "model.init_args.wd": {"distribution": "q_uniform", "min": 0.0, "max": 0.1, "q": 0.02},
    },
    "early_terminate": {"type": "hyperband", "min_iter": 3},
}


def _write(tmp_path: Path, data: object) -> str:
    (tmp_path / "base.yaml").write_text("name: base\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def _with(**changes: object) -> dict[str, object]:
    data = {**GOOD, **changes}
    return {k: v for k, v in data.items() if v is not None}


def _params(**params: object) -> dict[str, object]:
    return _with(parameters={**GOOD["parameters"], **params})  # type: ignore[dict-item]


def test_the_issue_example_parses_with_inferred_distributions(tmp_path: Path) -> None:
    spec = load_sweep_file(_write(tmp_path, GOOD), overrides=["trainer.accelerator=cpu"])
    by_key = {p.key: p for p in spec.parameters}
    assert spec.method == "bayes" and spec.metric_name == "val_loss" and spec.goal == "minimize"
    assert spec.run_cap == 20 and spec.parallel == 2 and spec.seed == 0
    assert spec.config == str((tmp_path / "base.yaml").resolve())
    assert by_key["model.init_args.lr"].distribution == "log_uniform_values"
    assert by_key["model.init_args.hidden_size"].distribution == "categorical"
    assert by_key["model.init_args.dropout"].distribution == "uniform"  # float bounds -> uniform
    assert by_key["model.init_args.layers"].distribution == "int_uniform"  # int bounds -> int_uniform
    assert by_key["trainer.max_epochs"].distribution == "constant" and by_key["trainer.max_epochs"].value == 5
    assert by_key["model.init_args.wd"].grid_points() == [0.0, 0.02, 0.04, 0.06, 0.08, 0.1]
    assert spec.hyperband is not None and spec.hyperband.min_iter == 3 and spec.hyperband.eta == 3
    assert spec.overrides == ["trainer.accelerator=cpu"]
    assert spec.grid_size is None


def test_grid_run_cap_defaults_to_the_grid_size_and_is_capped_by_it(tmp_path: Path) -> None:
    grid = _with(method="grid", run_cap=None, parameters={"a": {"values": [1, 2]}, "b": {"min": 1, "max": 3},
                                                          "c": {"value": "x"}}, early_terminate=None)
    spec = load_sweep_file(_write(tmp_path, grid))
    assert spec.grid_size == 6 and spec.run_cap == 6
    assert load_sweep_file(_write(tmp_path, {**grid, "run_cap": 100})).run_cap == 6
    assert load_sweep_file(_write(tmp_path, {**grid, "run_cap": 4})).run_cap == 4


def test_hyperband_max_iter_with_s(tmp_path: Path) -> None:
    spec = load_sweep_file(_write(tmp_path, _with(early_terminate={"type": "hyperband", "max_iter": 27, "s": 2})))
    assert spec.hyperband is not None and (spec.hyperband.min_iter, spec.hyperband.max_iter) == (3, 27)


@pytest.mark.parametrize(("data", "message"), [
    (_params(**{"model.init_args.lr": {"distribution": "normal", "mu": 0, "sigma": 1}}),
     "parameters.model.init_args.lr.distribution: normal has no faithful Optuna equivalent"),
    (_params(**{"model.init_args.lr": {"distribution": "log_normal", "min": 1, "max": 2}}),
     "parameters.model.init_args.lr.distribution: log_normal has no faithful Optuna equivalent"),
    (_params(**{"model.init_args.lr": {"distribution": "q_log_uniform_values", "min": 1, "max": 8, "q": 1}}),
     "parameters.model.init_args.lr.distribution: q_log_uniform_values has no faithful Optuna equivalent"),
    (_params(**{"model.init_args.act": {"values": ["relu", "gelu"], "probabilities": [0.9, 0.1]}}),
     "parameters.model.init_args.act.probabilities: not supported"),
    (_params(**{"model": {"parameters": {"lr": {"value": 1}}}}),
     "parameters.model.parameters: nested parameters are not supported"),
    (_with(program="train.py"), "program: not supported"),
    (_with(command=["python", "x"]), "command: not supported"),
    (_with(metrics={"name": "x"}), "metrics: unknown key"),
    (_with(method="hyperopt"), "method: expected one of grid, random, bayes, got 'hyperopt'"),
    (_with(metric={"name": "val_loss", "goal": "lower"}), "metric.goal: expected minimize or maximize"),
    (_with(metric=None), "metric: required"),
    (_with(config="missing.yaml"), "config: "),
    (_with(run_cap=None), "run_cap: required for method bayes"),
    (_with(run_cap=0), "run_cap: expected a positive integer"),
    (_with(parallel="two"), "parallel: expected a positive integer"),
    (_params(**{"model.init_args.dropout": {"min": 0.5, "max": 0.1}}),
     "parameters.model.init_args.dropout: min (0.5) must be less than max (0.1)"),
    (_params(**{"model.init_args.dropout": {"min": 0.1}}),
     "parameters.model.init_args.dropout: expected exactly one of value, values, or min and max"),
    (_params(**{"model.init_args.dropout": {"value": 1, "values": [1, 2]}}),
     "parameters.model.init_args.dropout: expected exactly one of value, values, or min and max"),
    (_params(**{"model.init_args.lr": {"distribution": "log_uniform_values", "min": 0, "max": 1}}),
     "parameters.model.init_args.lr.min: log_uniform_values needs min > 0"),
    (_params(**{"model.init_args.lr": {"distribution": "int_uniform", "min": 0.5, "max": 3}}),
     "parameters.model.init_args.lr: int_uniform needs integer min and max"),
    (_params(**{"model.init_args.wd": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.3}}),
     "parameters.model.init_args.wd.q: min (0) and max (1) must be multiples of q (0.3)"),
    (_params(**{"model.init_args.lr": {"min": 0.1, "max": 1, "step": 2}}),
     "parameters.model.init_args.lr.step: unknown key"),
    (_params(**{"model.init_args.hidden_size": {"values": []}}),
     "parameters.model.init_args.hidden_size.values: expected a non-empty list"),
    (_params(**{"model.init_args.hidden_size": {"values": [[1, 2]]}}),
     "parameters.model.init_args.hidden_size.values: expected a number, string, boolean or null"),
    (_params(**{"model init": {"value": 1}}), "parameters.model init: expected a dotted job-config key"),
    (_with(method="grid"), "parameters.model.init_args.dropout: method grid needs discrete values"),
    (_with(early_terminate={"type": "asha", "min_iter": 3}), "early_terminate.type: expected hyperband"),
    (_with(early_terminate={"type": "hyperband", "min_iter": 3, "max_iter": 9, "s": 1}),
     "early_terminate: give either min_iter, or max_iter with s, not both"),
    (_with(early_terminate={"type": "hyperband", "max_iter": 9}),
     "early_terminate: needs min_iter, or max_iter with s"),
    (_with(early_terminate={"type": "hyperband", "min_iter": 3, "strict": True}),
     "early_terminate.strict: unknown key"),
    ("method: [grid", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping of sweep keys"),
])
def test_bad_sweep_files_are_one_line_errors_naming_file_and_key(tmp_path: Path, data: object, message: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_sweep_file(path)
    text = info.value.message
    assert text.startswith(f"{path}: ") and message in text, text
    assert "\n" not in text


def test_overrides_read_back_as_the_same_values() -> None:
    from omegaconf import OmegaConf

    values = [0.0001, 1e-05, 3, "relu", "1e-3", True, None, 0.1]
    cfg = OmegaConf.from_dotlist([override_for(f"k{i}", v) for i, v in enumerate(values)])
    assert [cfg[f"k{i}"] for i in range(len(values))] == values
