"""The sweep's Optuna side in-process: grid exhaustion, seeds, and bayes (TPE) against random on a known bowl."""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest

from supervisor.sweep import search
from supervisor.sweep.spec import SweepSpec, parse_sweep
from tests.support.fake_trainer import objective


def _spec(tmp_path: Path, method: str, parameters: dict[str, object], **keys: object) -> SweepSpec:
    (tmp_path / "base.yaml").write_text("name: base\n")
    data = {"config": "base.yaml", "method": method, "metric": {"name": "val_loss"}, "parameters": parameters, **keys}
    return parse_sweep(data, source=str(tmp_path / "sweep.yaml"), overrides=[])


def _study(tmp_path: Path | None, spec: SweepSpec, name: str) -> optuna.Study:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}" if tmp_path is not None else None  # None: in memory
    return search.open_study(spec, study_name=name, storage=storage)


def test_grid_asks_every_combination_once_and_the_last_tell_does_not_raise(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "grid", {"a": {"values": [1, 2]}, "b": {"values": ["u", "v"]}, "c": {"value": 0.5}},
                 seed=3)
    study = _study(tmp_path, spec, "grid")
    seen = []
    assert spec.grid_size == 4
    for _ in range(spec.grid_size):
        trial, params = search.ask(study, spec)
        seen.append((params["a"], params["b"], params["c"]))
        search.tell(study, trial.number, "complete", float(params["a"]))  # GridSampler's study.stop() is caught
    assert sorted(seen) == [(1, "u", 0.5), (1, "v", 0.5), (2, "u", 0.5), (2, "v", 0.5)]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4


def test_a_grid_point_whose_trial_never_got_a_job_is_asked_again(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "grid", {"a": {"values": [1, 2]}, "b": {"values": [3, 4]}, "c": {"value": 0}}, seed=0)
    study = _study(tmp_path, spec, "g")
    trial, lost = search.ask(study, spec)
    search.abandon(study, spec, trial.number, lost)  # the worker crashed before its job existed
    ran = []
    for _ in range(spec.grid_size or 0):
        trial, params = search.ask(study, spec)
        search.tell(study, trial.number, "complete", 0.0)
        ran.append((params["a"], params["b"], params["c"]))
    assert sorted(ran) == [(1, 3, 0), (1, 4, 0), (2, 3, 0), (2, 4, 0)]
    assert (lost["a"], lost["b"], 0) in ran


def test_a_reopened_study_keeps_its_trials_and_settles_running_ones(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "random", {"x": {"min": 0.0, "max": 1.0}}, run_cap=5, seed=0)
    study = _study(tmp_path, spec, "r")
    first, _ = search.ask(study, spec)
    search.tell(study, first.number, "complete", 1.0)
    second, _ = search.ask(study, spec)
    again = _study(tmp_path, spec, "r")  # as a restarted worker does
    assert search.running_numbers(again) == [second.number]
    search.tell(again, second.number, "fail", None)
    search.tell(again, second.number, "fail", None)  # settling twice is harmless
    assert search.running_numbers(again) == [] and [t.state.name for t in again.trials] == ["COMPLETE", "FAIL"]


def _best_after(tmp_path: Path, method: str, seed: int, budget: int) -> float:
    spec = _spec(tmp_path, method, {"x": {"min": 0.0, "max": 1.0}, "y": {"min": 0.0, "max": 1.0}},
                 run_cap=budget, seed=seed)
    study = _study(None, spec, f"{method}-{seed}")  # in memory: the search alone, fast
    best = float("inf")
    for _ in range(budget):
        trial, params = search.ask(study, spec)
        value = objective(params["x"], params["y"])
        search.tell(study, trial.number, "complete", value)
        best = min(best, value)
    return best


def test_bayes_beats_random_on_the_median_over_seeds_with_the_same_budget(tmp_path: Path) -> None:
    seeds, budget = range(5), 24
    bayes = [_best_after(tmp_path, "bayes", s, budget) for s in seeds]
    random = [_best_after(tmp_path, "random", s, budget) for s in seeds]
    assert statistics.median(bayes) < statistics.median(random), (bayes, random)
    assert search.startup_trials(budget) == 6  # TPE's first trials are random


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_the_same_seed_draws_the_same_points(tmp_path: Path, method: str) -> None:
    spec = _spec(tmp_path, method, {"x": {"min": 0.0, "max": 1.0}, "k": {"values": [1, 2, 3]},
                                    "n": {"min": 1, "max": 9}}, run_cap=12, seed=5)
    draws = []
    for name in ("a", "b"):
        study = _study(tmp_path, spec, name)
        points = []
        for _ in range(12):
            trial, params = search.ask(study, spec)
            search.tell(study, trial.number, "complete", float(params["x"]) * params["n"])
            points.append(params)
        draws.append(points)
    assert draws[0] == draws[1]
    assert all(isinstance(p["n"], int) and 1 <= p["n"] <= 9 and p["k"] in (1, 2, 3) for p in draws[0])
