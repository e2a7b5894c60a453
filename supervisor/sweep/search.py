"""The sweep's method as an Optuna study: sampler, pruner and search space (imports Optuna: worker side only).

- grid -> ``GridSampler`` over every discrete value: each combination once. Optuna's
  grid calls ``study.stop()`` after the last point, which raises outside ``optimize``
  (``tell`` catches it here), and an ``ask()`` past the grid's size repeats a point,
  so the worker stops asking at the grid's size.
- random -> ``RandomSampler``.
- bayes -> ``TPESampler``, multivariate, with the constant liar (parallel trials do not
  all sample the same point). Not ``GPSampler``: it imports torch (seconds per worker
  start) and its fit grows with the trials, while TPE handles categorical and integer
  knobs natively. TPE's first ``n_startup_trials`` are random: a quarter of
  ``run_cap``, between 2 and 10 (Optuna's default is 10, which would leave a 20-trial
  sweep half random).
- hyperband -> ``SuccessiveHalvingPruner`` (min_resource = min_iter, reduction_factor =
  eta), fed the trial's metric after each validation. W&B's "hyperband" is one bracket
  of asynchronous successive halving: it stops runs at min_iter, min_iter*eta, ... (or
  at max_iter/eta^s, ..., max_iter/eta) when they are not in the top 1/eta so far.
  That is Optuna's successive halving. Optuna's ``HyperbandPruner`` would instead split
  the trials over several brackets, each judged only against its own members: with a
  20-trial sweep most brackets have nobody to compare with and prune nothing.
"""

from __future__ import annotations

from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from supervisor.sweep.spec import Param, SweepSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def startup_trials(run_cap: int) -> int:
    """How many of a bayes sweep's first trials TPE samples at random."""
    return min(10, max(2, run_cap // 4))


def make_sampler(spec: SweepSpec, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of ``spec.method``. ``seed_offset``: a restarted worker must not replay the same draws."""
    seed = None if spec.seed is None else spec.seed + seed_offset
    if spec.method == "grid":
        space = {p.key: p.grid_points() for p in spec.parameters if p.distribution != "constant"}
        return optuna.samplers.GridSampler(space, seed=seed)  # type: ignore[arg-type]
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(spec.run_cap),
                                      multivariate=True, constant_liar=True)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    hb = spec.hyperband
    if hb is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=hb.min_iter, reduction_factor=hb.eta,
                                                  min_early_stopping_rate=0)


def distribution(param: Param) -> BaseDistribution:
    """The Optuna distribution W&B's ``param.distribution`` samples from."""
    d = param.distribution
    if d == "categorical":
        return CategoricalDistribution(param.values or [])
    if d == "int_uniform":
        assert param.min is not None and param.max is not None
        return IntDistribution(int(param.min), int(param.max))
    assert param.min is not None and param.max is not None
    if d == "q_uniform":
        return FloatDistribution(float(param.min), float(param.max), step=param.q)
    return FloatDistribution(float(param.min), float(param.max), log=d == "log_uniform_values")


def search_space(spec: SweepSpec) -> dict[str, BaseDistribution]:
    """The sampled parameters; constants are not Optuna's business (they go straight into every trial)."""
    space: dict[str, BaseDistribution] = {}
    for p in spec.parameters:
        if p.distribution == "constant":
            continue
        # A grid samples each key's listed points (GridSampler needs them to be in the distribution).
        space[p.key] = CategoricalDistribution(p.grid_points() or []) if spec.method == "grid" else distribution(p)
    return space


def open_study(spec: SweepSpec, *, study_name: str, storage: str | None) -> optuna.Study:
    """Create the study, or load it after a restart (the sampler reseeded past the trials already drawn).

    ``storage`` None: in memory (tests of the search alone).
    """
    offset = 0
    if storage is not None:
        try:
            offset = len(optuna.load_study(study_name=study_name, storage=storage).trials)
        except KeyError:
            pass
    direction: Literal["minimize", "maximize"] = "maximize" if spec.goal == "maximize" else "minimize"
    return optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True,
                               direction=direction, sampler=make_sampler(spec, seed_offset=offset),
                               pruner=make_pruner(spec))


def ask(study: optuna.Study, spec: SweepSpec) -> tuple[optuna.Trial, dict[str, Any]]:
    """A new trial and its full parameters (constants included), by job-config key."""
    trial = study.ask(search_space(spec))
    params = {p.key: p.value for p in spec.parameters if p.distribution == "constant"}
    params.update(trial.params)
    ordered = {p.key: params[p.key] for p in spec.parameters}
    return trial, ordered


def abandon(study: optuna.Study, spec: SweepSpec, number: int, params: dict[str, Any]) -> None:
    """Fail a trial that never got a job, and (grid) queue its point again.

    Optuna's grid counts a failed trial's point as visited: without the replay that point
    would never run, and the last ask would repeat another one instead.
    """
    tell(study, number, "fail", None)
    if spec.method == "grid":
        sampled = set(search_space(spec))
        study.enqueue_trial({k: v for k, v in params.items() if k in sampled})


def trial_by_number(study: optuna.Study, number: int) -> optuna.Trial:
    """A live handle on trial ``number`` (after a restart), to report to and prune."""
    frozen = study.trials[number]
    return optuna.Trial(study, frozen._trial_id)  # no public way from a number to a Trial handle


def state_of(study: optuna.Study, number: int) -> TrialState:
    return study.trials[number].state


def tell(study: optuna.Study, number: int, outcome: str, value: float | None) -> None:
    """Settle trial ``number``: complete (with ``value``), pruned or fail; a finished trial is left alone."""
    state = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}[outcome]
    try:
        study.tell(number, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
    except RuntimeError as exc:
        # GridSampler calls study.stop() after its last point; outside optimize() that raises
        # once the trial is already stored: nothing is lost.
        if "stop" not in str(exc).lower():
            raise


def report(trial: optuna.Trial, values: list[float]) -> bool:
    """Report the trial's per-validation values not yet reported; whether the pruner says stop."""
    seen = study_intermediate(trial)
    for step, value in enumerate(values, start=1):
        if step not in seen:
            trial.report(value, step)
    return bool(values) and trial.should_prune()


def study_intermediate(trial: optuna.Trial) -> dict[int, float]:
    frozen = trial.study.trials[trial.number]
    return dict(frozen.intermediate_values)


def running_numbers(study: optuna.Study) -> list[int]:
    """Optuna trials still RUNNING (after a crash: to settle)."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
