"""The sweep file: the W&B sweep configuration format, parsed and checked without Optuna.

    config: digits.yaml                 # the base job config, relative to this file
    method: bayes                       # grid | random | bayes
    metric: {name: val_loss, goal: minimize}
    run_cap: 20                         # grid: the grid's size by default
    parallel: 2                         # an addition: trials at once
    seed: 0                             # an addition: the sampler's seed
    storage: postgresql://...           # an addition: Optuna storage (default: SQLite in the sweep's dir)
    parameters:                         # flat job-config keys
      model.init_args.lr: {distribution: log_uniform_values, min: 0.0001, max: 0.1}
    early_terminate: {type: hyperband, min_iter: 3}

Only distributions Optuna samples exactly as W&B does are accepted; anything else is a
one-line ``FILE: KEY: problem`` error, so a sweep never silently searches another space.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from supervisor.errors import ConfigError

METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")
DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform_values")
# W&B distributions with no faithful Optuna equivalent, and what to use instead.
UNSUPPORTED = {
    "normal": "Optuna has no normal distribution",
    "q_normal": "Optuna has no normal distribution",
    "log_normal": "Optuna has no log-normal distribution",
    "q_log_normal": "Optuna has no log-normal distribution",
    "log_uniform": "use log_uniform_values (min and max as values, not exponents)",
    "inv_log_uniform": "Optuna has no inverse log-uniform distribution",
    "inv_log_uniform_values": "Optuna has no inverse log-uniform distribution",
    "q_log_uniform": "Optuna cannot quantise a log scale",
    "q_log_uniform_values": "Optuna cannot quantise a log scale",
    "beta": "Optuna has no beta distribution",
    "q_beta": "Optuna has no beta distribution",
}
TOP_KEYS = ("config", "name", "description", "method", "metric", "run_cap", "parallel", "seed", "storage",
            "parameters", "early_terminate")
PARAM_KEYS = ("value", "values", "min", "max", "distribution", "q")
KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) job-config key."""

    key: str
    distribution: str  # one of DISTRIBUTIONS
    value: Scalar = None  # constant
    values: list[Scalar] | None = None  # categorical
    min: float | int | None = None
    max: float | int | None = None
    q: float | None = None

    def grid_points(self) -> list[Scalar] | None:
        """Every value of a discrete parameter in order, or None when it is continuous."""
        if self.distribution == "constant":
            return [self.value]
        if self.distribution == "categorical":
            return list(self.values or [])
        if self.distribution == "int_uniform":
            assert isinstance(self.min, int) and isinstance(self.max, int)
            return list(range(self.min, self.max + 1))
        if self.distribution == "q_uniform":
            assert self.min is not None and self.max is not None and self.q is not None
            count = round((self.max - self.min) / self.q)
            return [round(self.min + i * self.q, 12) for i in range(count + 1)]
        return None


@dataclass(frozen=True)
class Hyperband:
    """``early_terminate: hyperband``; one iteration is one validation of the trial."""

    min_iter: int
    max_iter: int | None  # informational: the trial ends there anyway
    eta: int = 3


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep file. ``config`` is absolute; ``source`` is the sweep file as given."""

    source: str
    config: str
    name: str
    method: str
    metric_name: str
    goal: str
    parameters: list[Param]
    run_cap: int
    parallel: int = 1
    seed: int | None = None
    storage: str | None = None
    description: str = ""
    hyperband: Hyperband | None = None
    overrides: list[str] = field(default_factory=list)  # applied to the base config of every trial

    @property
    def grid_size(self) -> int | None:
        """How many points a grid has (None for random and bayes)."""
        if self.method != "grid":
            return None
        return math.prod(len(p.grid_points() or []) for p in self.parameters)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        data = dict(data)
        data["parameters"] = [Param(**p) for p in data["parameters"]]
        data["hyperband"] = Hyperband(**data["hyperband"]) if data.get("hyperband") else None
        return cls(**data)


def override_for(key: str, value: Scalar) -> str:
    """A ``key=value`` override that OmegaConf reads back as exactly ``value`` (strings quoted)."""
    return f"{key}={json.dumps(value)}" if not isinstance(value, float) else f"{key}={value!r}"


def load_sweep_file(path: str, *, overrides: list[str] | None = None, text: str | None = None) -> SweepSpec:
    """Read and check the sweep file at ``path`` (``text``: its content, already read)."""
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(path, None, f"cannot read the file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(path, None, f"not valid YAML{where}") from None
    return parse_sweep(data, source=path, overrides=overrides or [])


def parse_sweep(data: Any, *, source: str, overrides: list[str]) -> SweepSpec:
    """Check a loaded sweep mapping; raise ``ConfigError(source, key, problem)`` on the first problem."""
    def err(key: str | None, problem: str) -> ConfigError:
        return ConfigError(source, key, problem)

    if not isinstance(data, dict):
        raise err(None, "expected a mapping of sweep keys (config, method, metric, parameters, ...)")
    for key in data:
        if key in ("program", "command"):
            raise err(str(key), "not supported: every trial runs the base job config's trainer "
                                "(name it with `config:`)")
        if key not in TOP_KEYS:
            raise err(str(key), f"unknown key; expected one of {', '.join(TOP_KEYS)}")
    config = data.get("config")
    if not isinstance(config, str) or not config:
        raise err("config", "required: the base job config file, relative to the sweep file")
    config_path = (Path(source).resolve().parent / config).resolve()
    if not config_path.is_file():
        raise err("config", f"{config_path} is not a file")
    method = data.get("method")
    if method not in METHODS:
        raise err("method", f"expected one of {', '.join(METHODS)}, got {method!r}")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise err("name", f"expected letters, digits, '.', '_' or '-', got {name!r}")
    metric_name, goal = _metric(data.get("metric"), err)
    params = _parameters(data.get("parameters"), method, err)
    grid = math.prod(len(p.grid_points() or []) for p in params) if method == "grid" else None
    run_cap = data.get("run_cap")
    if run_cap is None:
        if grid is None:
            raise err("run_cap", f"required for method {method} (how many trials to run)")
        run_cap = grid
    if not _is_int(run_cap) or run_cap < 1:
        raise err("run_cap", f"expected a positive integer, got {run_cap!r}")
    if grid is not None:
        run_cap = min(run_cap, grid)
    parallel = data.get("parallel", 1)
    if not _is_int(parallel) or parallel < 1:
        raise err("parallel", f"expected a positive integer, got {parallel!r}")
    seed = data.get("seed")
    if seed is not None and not _is_int(seed):
        raise err("seed", f"expected an integer, got {seed!r}")
    storage = data.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise err("storage", f"expected a database URL like postgresql://host/db, got {storage!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise err("description", "expected a string")
    hyperband = _early_terminate(data.get("early_terminate"), err)
    return SweepSpec(source=source, config=str(config_path), name=name, method=method, metric_name=metric_name,
                     goal=goal, parameters=params, run_cap=int(run_cap), parallel=int(parallel),
                     seed=None if seed is None else int(seed), storage=storage, description=description,
                     hyperband=hyperband, overrides=list(overrides))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _metric(metric: Any, err: Any) -> tuple[str, str]:
    if not isinstance(metric, dict):
        raise err("metric", "required: {name: METRIC, goal: minimize|maximize}")
    for key in metric:
        if key not in ("name", "goal"):
            raise err(f"metric.{key}", "unknown key; expected name and goal")
    name = metric.get("name")
    if not isinstance(name, str) or not name:
        raise err("metric.name", "required: the logged metric the sweep optimises")
    goal = metric.get("goal", "minimize")
    if goal not in GOALS:
        raise err("metric.goal", f"expected minimize or maximize, got {goal!r}")
    return name, goal


def _parameters(params: Any, method: str, err: Any) -> list[Param]:
    if not isinstance(params, dict) or not params:
        raise err("parameters", "required: a mapping of job-config keys to their values or distributions")
    out = []
    for key, spec in params.items():
        where = f"parameters.{key}"
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise err(where, "expected a dotted job-config key like model.init_args.lr")
        if not isinstance(spec, dict):
            raise err(where, "expected a mapping with value, values, or min and max")
        if "parameters" in spec:
            raise err(f"{where}.parameters", "nested parameters are not supported: use flat dotted keys "
                                             "(model.init_args.lr)")
        if "probabilities" in spec:
            raise err(f"{where}.probabilities", "not supported: Optuna samples categorical values uniformly")
        dist = spec.get("distribution")
        if isinstance(dist, str) and dist in UNSUPPORTED:  # before its keys (mu, sigma): the real problem
            raise err(f"{where}.distribution", f"{dist} has no faithful Optuna equivalent ({UNSUPPORTED[dist]})")
        for sub in spec:
            if sub not in PARAM_KEYS:
                raise err(f"{where}.{sub}", f"unknown key; expected one of {', '.join(PARAM_KEYS)}")
        param = _param(key, spec, where, err)
        if method == "grid" and param.grid_points() is None:
            raise err(where, f"method grid needs discrete values (value, values, int or q_uniform ranges); "
                             f"{param.distribution} is continuous")
        out.append(param)
    return out


def _param(key: str, spec: dict[str, Any], where: str, err: Any) -> Param:
    dist = spec.get("distribution")
    if dist is not None and dist not in DISTRIBUTIONS:
        raise err(f"{where}.distribution", f"expected one of {', '.join(DISTRIBUTIONS)}, got {dist!r}")
    present: set[str] = {k for k in ("value", "values", "min", "max") if k in spec}
    if dist is None:
        if present == {"value"}:
            dist = "constant"
        elif present == {"values"}:
            dist = "categorical"
        elif present == {"min", "max"}:
            dist = "int_uniform" if _is_int(spec["min"]) and _is_int(spec["max"]) else "uniform"
        else:
            raise err(where, "expected exactly one of value, values, or min and max")
    if "q" in spec and dist != "q_uniform":
        raise err(f"{where}.q", "only q_uniform takes q")
    if dist == "constant":
        _only(present, {"value"}, where, dist, err)
        return Param(key, dist, value=_scalar(spec["value"], f"{where}.value", err))
    if dist == "categorical":
        _only(present, {"values"}, where, dist, err)
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise err(f"{where}.values", "expected a non-empty list")
        checked = [_scalar(v, f"{where}.values", err) for v in values]
        if len({json.dumps(v) for v in checked}) != len(checked):
            raise err(f"{where}.values", "values repeat")
        return Param(key, dist, values=checked)
    _only(present, {"min", "max"}, where, dist, err)
    low, high = spec["min"], spec["max"]
    for sub, bound in (("min", low), ("max", high)):
        if not _is_number(bound):
            raise err(f"{where}.{sub}", f"expected a number, got {bound!r}")
    if not low < high:
        raise err(where, f"min ({low}) must be less than max ({high})")
    if dist == "int_uniform":
        if not (_is_int(low) and _is_int(high)):
            raise err(where, "int_uniform needs integer min and max")
        return Param(key, dist, min=low, max=high)
    if dist == "log_uniform_values" and low <= 0:
        raise err(f"{where}.min", "log_uniform_values needs min > 0")
    if dist == "q_uniform":
        q = spec.get("q", 1.0)
        if not _is_number(q) or q <= 0:
            raise err(f"{where}.q", f"expected a positive number, got {q!r}")
        steps = (high - low) / q
        # Optuna's stepped floats start at min; W&B rounds to multiples of q: the same set only when both align.
        if abs(steps - round(steps)) > 1e-9 or abs(low / q - round(low / q)) > 1e-9:
            raise err(f"{where}.q", f"min ({low}) and max ({high}) must be multiples of q ({q})")
        return Param(key, dist, min=float(low), max=float(high), q=float(q))
    return Param(key, dist, min=float(low), max=float(high))


def _only(present: set[str], allowed: set[str], where: str, dist: str, err: Any) -> None:
    extra = sorted(present - allowed)
    if extra:
        raise err(f"{where}.{extra[0]}", f"not used by distribution {dist}")
    missing = sorted(allowed - present)
    if missing:
        raise err(f"{where}.{missing[0]}", f"required by distribution {dist}")


def _scalar(value: Any, where: str, err: Any) -> Scalar:
    if value is None or isinstance(value, (str, bool, int)) or _is_number(value):
        return value
    raise err(where, f"expected a number, string, boolean or null, got {value!r}")


def _early_terminate(spec: Any, err: Any) -> Hyperband | None:
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise err("early_terminate", "expected {type: hyperband, min_iter: N} or {type: hyperband, max_iter: N, s: N}")
    for key in spec:
        if key not in ("type", "min_iter", "max_iter", "s", "eta"):
            raise err(f"early_terminate.{key}", "unknown key; expected type, min_iter, max_iter, s, eta")
    if spec.get("type") != "hyperband":
        raise err("early_terminate.type", f"expected hyperband, got {spec.get('type')!r}")
    eta = spec.get("eta", 3)
    if not _is_int(eta) or eta < 2:
        raise err("early_terminate.eta", f"expected an integer >= 2, got {eta!r}")
    for key in ("min_iter", "max_iter", "s"):
        if key in spec and (not _is_int(spec[key]) or spec[key] < 1):
            raise err(f"early_terminate.{key}", f"expected a positive integer, got {spec[key]!r}")
    if "min_iter" in spec:
        if "max_iter" in spec or "s" in spec:
            raise err("early_terminate", "give either min_iter, or max_iter with s, not both")
        return Hyperband(min_iter=spec["min_iter"], max_iter=None, eta=eta)
    if "max_iter" not in spec or "s" not in spec:
        raise err("early_terminate", "needs min_iter, or max_iter with s")
    min_iter = spec["max_iter"] // eta ** spec["s"]
    if min_iter < 1:
        raise err("early_terminate.s",
                  f"max_iter / eta^s = {spec['max_iter']} / {eta}^{spec['s']} is below 1 iteration")
    return Hyperband(min_iter=min_iter, max_iter=spec["max_iter"], eta=eta)
