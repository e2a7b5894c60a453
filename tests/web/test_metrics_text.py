"""``/metrics`` text: valid exposition format 0.0.4, and the numbers the job and GPU lists say."""

from __future__ import annotations

import re
from typing import Any

from supervisor.web.metrics import render_metrics, restarts_by_cause

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf'^({_NAME})(?:\{{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\}})? '
                     r"(-?[0-9.]+(?:e[+-]?[0-9]+)?|NaN|[+-]Inf)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A strict reader of the text format: every family has HELP then TYPE before its samples, once; every
    sample belongs to the family declared last; no series appears twice."""
    assert text.endswith("\n")
    series: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    declared: set[str] = set()
    current: str | None = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert re.fullmatch(_NAME, name) and name not in declared, line
            assert lines[i + 1].startswith(f"# TYPE {name} "), line
            declared.add(name)
            current = name
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == current and kind in ("gauge", "counter"), line
            assert kind != "counter" or name.endswith("_total"), line
        else:
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            assert name == current, line
            key = (name, frozenset(_LABEL.findall(labels or "")))
            assert key not in series, f"duplicate series {line!r}"
            series[key] = float(value)
    return series


def _job(job_id: str, state: str, attempts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "name": job_id.split("-")[0], "state": state, "attempts": attempts, "global_step": 120,
            "budget": {"seconds": None, "used": 0.0, "remaining": None}, "best_checkpoint": None, **extra}


def _get(series: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, **labels: Any) -> float:
    return series[(metric, frozenset((k, str(v)) for k, v in labels.items()))]


def test_jobs_states_restarts_and_budgets() -> None:
    crashed_twice = [{"n": 1, "reason": "crash"}, {"n": 2, "reason": "hang"}, {"n": 3, "reason": "crash"},
                     {"n": 4, "reason": None}]
    jobs = [
        _job("digits-aaaaaa", "running", crashed_twice,
             budget={"seconds": 3600, "used": 600.5, "remaining": 2999.5},
             best_checkpoint={"path": "/x.ckpt", "score": 0.125, "monitor": "val_loss", "step": 100}),
        _job("mnist-bbbbbb", "backoff", [{"n": 1, "reason": "gpu_fault"}]),
        _job("big-cccccc", "completed", [{"n": 1, "reason": "completed"}, {"n": 2, "reason": "completed"}]),
        _job("odd-dddddd", "failed", [{"n": 1, "reason": "crash"}],
             best_checkpoint={"path": "/y.ckpt", "score": float("nan"), "monitor": "val_loss"}),
    ]
    text = render_metrics(jobs, None, version="1.2.3")
    series = parse(text)
    assert _get(series, "ml_supervisor_build_info", version="1.2.3") == 1
    assert _get(series, "ml_supervisor_jobs", state="running") == 1
    assert _get(series, "ml_supervisor_jobs", state="backoff") == 1
    assert _get(series, "ml_supervisor_jobs", state="queued") == 0
    job = {"job": "digits-aaaaaa", "name": "digits"}
    assert _get(series, "ml_supervisor_job_state", **job, state="running") == 1
    assert _get(series, "ml_supervisor_job_state", **job, state="failed") == 0
    assert _get(series, "ml_supervisor_job_restarts_total", **job, cause="crash") == 2
    assert _get(series, "ml_supervisor_job_restarts_total", **job, cause="hang") == 1
    assert _get(series, "ml_supervisor_job_restarts_total", **job, cause="reboot") == 0
    # all jobs: the backoff job's gpu_fault counts now (its relaunch is due); a user requeue of a completed
    # job and the crash that made a job fail are not restarts
    assert _get(series, "ml_supervisor_restarts_total", cause="crash") == 2
    assert _get(series, "ml_supervisor_restarts_total", cause="gpu_fault") == 1
    assert _get(series, "ml_supervisor_restarts_total", cause="vanished") == 0
    assert _get(series, "ml_supervisor_job_budget_seconds", **job) == 3600
    assert _get(series, "ml_supervisor_job_budget_remaining_seconds", **job) == 2999.5
    assert _get(series, "ml_supervisor_job_best_checkpoint_score", **job, monitor="val_loss") == 0.125
    assert _get(series, "ml_supervisor_job_attempts", **job) == 4
    # no budget, no NaN score: those series are left out rather than reported as 0
    assert not [k for k in series if k[0] == "ml_supervisor_job_budget_seconds" and ("job", "mnist-bbbbbb") in k[1]]
    assert not [k for k in series if k[0] == "ml_supervisor_job_best_checkpoint_score"
                and ("job", "odd-dddddd") in k[1]]
    assert _get(series, "ml_supervisor_nvml_up") == 0
    assert not [k for k in series if k[0].startswith("ml_supervisor_gpu_")]


def test_gpus_in_dcgm_style_and_label_escaping() -> None:
    gpus = [
        {"index": 0, "uuid": "GPU-aaa", "name": 'Tesla "V100"\\x', "health": "healthy", "reasons": [], "jobs": [],
         "temperature_c": 41, "memory_used_mib": 0, "memory_total_mib": 16384},
        {"index": 1, "uuid": "GPU-bbb", "name": "H100", "health": "quarantined", "reasons": ["Xid 79"],
         "jobs": ["a", "b"], "temperature_c": None, "memory_used_mib": None, "memory_total_mib": None},
    ]
    jobs = [_job("we\"ird\nname-eeeeee", "queued", [])]
    series = parse(render_metrics(jobs, gpus, version="0"))
    assert _get(series, "ml_supervisor_nvml_up") == 1
    assert _get(series, "ml_supervisor_gpu_info", gpu=0, UUID="GPU-aaa", modelName='Tesla \\"V100\\"\\\\x') == 1
    assert _get(series, "ml_supervisor_gpu_health", gpu=1, UUID="GPU-bbb", health="quarantined") == 1
    assert _get(series, "ml_supervisor_gpu_health", gpu=1, UUID="GPU-bbb", health="healthy") == 0
    assert _get(series, "ml_supervisor_gpu_temperature_celsius", gpu=0, UUID="GPU-aaa") == 41
    assert _get(series, "ml_supervisor_gpu_memory_total_bytes", gpu=0, UUID="GPU-aaa") == 16384 * 1024 * 1024
    assert _get(series, "ml_supervisor_gpu_jobs", gpu=1, UUID="GPU-bbb") == 2
    assert ("ml_supervisor_gpu_temperature_celsius", frozenset({("gpu", "1"), ("UUID", "GPU-bbb")})) not in series
    assert _get(series, "ml_supervisor_job_state", job='we\\"ird\\nname-eeeeee', name='we\\"ird\\nname',
                state="queued") == 1


def test_restarts_by_cause_counts_only_relaunches() -> None:
    attempts = [{"n": 2, "reason": "user_restart"}, {"n": 1, "reason": "crash"}, {"n": 3, "reason": "crash"}]
    assert restarts_by_cause(attempts, "failed") == {"crash": 1, "user_restart": 1}
    assert restarts_by_cause(attempts, "backoff") == {"crash": 2, "user_restart": 1}
    assert restarts_by_cause([], "queued") == {}
