"""Prometheus ``/metrics``: job states, restarts by cause, budgets, GPU health, as text exposition 0.0.4.

A pure function of the job list (``Operations.op_list``) and the GPU list
(``supervisorctl gpus --json`` entries, or None without NVML). Written by hand:
the format is a few lines of text, and the daemon does not need a registry of
live metric objects when it can render a snapshot of its store per scrape.

Conventions follow node_exporter and the DCGM exporter:

- one ``ml_supervisor_`` prefix, base units in the name (``_seconds``,
  ``_bytes``, ``_celsius``), ``_total`` for counters, ``_info`` gauges of value 1
  that carry descriptive labels;
- a state is a gauge per possible state with 1 for the current one and 0 for
  the others (``node_systemd_unit_state``), so queries never see a series vanish
  when a job moves on;
- known label values of counters are emitted at 0 (restarts by cause) so
  ``rate()`` and ``increase()`` see the first restart;
- GPUs are labelled ``gpu`` (the index), ``UUID`` and ``modelName`` as DCGM does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from supervisor.rules.policy import FAILURE_CAUSES, RESTART_NOW_CAUSES
from supervisor.rules.states import JobState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "ml_supervisor_"
RESTART_CAUSES = FAILURE_CAUSES + RESTART_NOW_CAUSES
GPU_HEALTH_VALUES = ("healthy", "degraded", "failed", "quarantined")
MIB = 1024 * 1024

Labels = Mapping[str, Any]


class _Family:
    """One metric family: its HELP, TYPE and samples, rendered in order."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = PREFIX + name
        self.kind = kind
        self.help = help_text
        self.samples: list[tuple[Labels, float]] = []

    def add(self, value: float | int | bool | None, **labels: Any) -> None:
        if value is None:
            return  # an unknown value is left out, not reported as 0
        self.samples.append((labels, float(value)))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples:
            lines.append(f"{self.name}{_labels(labels)} {_number(value)}")
        return lines


def render_metrics(jobs: Sequence[Mapping[str, Any]], gpus: Sequence[Mapping[str, Any]] | None, *,
                   version: str) -> str:
    """The exposition text for one scrape. ``gpus`` None: NVML is not available on this node."""
    families: list[_Family] = []

    def family(name: str, kind: str, help_text: str) -> _Family:
        f = _Family(name, kind, help_text)
        families.append(f)
        return f

    family("build_info", "gauge", "A metric with a constant '1' value labelled by the ml-supervisor version.").add(
        1, version=version)

    by_state = family("jobs", "gauge", "Number of jobs in each state.")
    counts = {s.value: 0 for s in JobState}
    for job in jobs:
        counts[str(job["state"])] = counts.get(str(job["state"]), 0) + 1
    for state, count in counts.items():
        by_state.add(count, state=state)

    restarts_all = family("restarts_total", "counter",
                          "Restarts of all jobs, by the cause that ended the attempt before the restart.")
    causes_all: dict[str, int] = {cause.value: 0 for cause in RESTART_CAUSES}
    job_state = family("job_state", "gauge", "Current state of each job (1 for the current state, 0 for the others).")
    job_restarts = family("job_restarts_total", "counter",
                          "Restarts of each job, by the cause that ended the attempt before the restart.")
    attempts = family("job_attempts", "gauge", "Attempts (processes launched) of each job so far.")
    step = family("job_global_step", "gauge", "Latest global step of each job.")
    budget = family("job_budget_seconds", "gauge", "Time budget of each job (jobs with a budget).")
    budget_used = family("job_budget_used_seconds", "gauge", "Wall-clock time each job has used of its budget.")
    budget_left = family("job_budget_remaining_seconds", "gauge", "Time left of each job's budget.")
    best = family("job_best_checkpoint_score", "gauge",
                  "Monitored score of each job's best checkpoint (labelled by the monitored metric).")
    for job in jobs:
        ids = {"job": job["id"], "name": job.get("name", "")}
        for state in JobState:
            job_state.add(1 if job["state"] == state.value else 0, **ids, state=state.value)
        by_cause = restarts_by_cause(job.get("attempts") or [], job["state"])
        for cause in RESTART_CAUSES:
            job_restarts.add(by_cause.get(cause, 0), **ids, cause=cause)
        for cause_name, n in by_cause.items():
            causes_all[cause_name] = causes_all.get(cause_name, 0) + n
        attempts.add(len(job.get("attempts") or []), **ids)
        step.add(job.get("global_step"), **ids)
        b = job.get("budget") or {}
        if b.get("seconds") is not None:
            budget.add(b["seconds"], **ids)
            budget_used.add(b.get("used"), **ids)
            budget_left.add(b.get("remaining"), **ids)
        top = job.get("best_checkpoint") or {}
        if isinstance(top.get("score"), (int, float)) and math.isfinite(top["score"]):
            best.add(top["score"], **ids, monitor=top.get("monitor") or "")
    for cause_name, n in causes_all.items():
        restarts_all.add(n, cause=cause_name)

    family("nvml_up", "gauge", "Whether the GPU layer (NVML) is available: 1 yes, 0 no.").add(
        0 if gpus is None else 1)
    info = family("gpu_info", "gauge", "A metric with a constant '1' value labelled by each GPU's identity.")
    health = family("gpu_health", "gauge",
                    "Health of each GPU as the supervisor sees it (1 for the current value, 0 for the others).")
    temperature = family("gpu_temperature_celsius", "gauge", "GPU temperature.")
    used = family("gpu_memory_used_bytes", "gauge", "GPU framebuffer memory in use.")
    total = family("gpu_memory_total_bytes", "gauge", "GPU framebuffer memory in total.")
    placed = family("gpu_jobs", "gauge", "Jobs the supervisor has placed on each GPU.")
    for gpu in gpus or []:
        ids = {"gpu": gpu.get("index"), "UUID": gpu.get("uuid") or ""}
        info.add(1, **ids, modelName=gpu.get("name") or "")
        for value in GPU_HEALTH_VALUES:
            health.add(1 if gpu.get("health") == value else 0, **ids, health=value)
        temperature.add(gpu.get("temperature_c"), **ids)
        used.add(_mib_to_bytes(gpu.get("memory_used_mib")), **ids)
        total.add(_mib_to_bytes(gpu.get("memory_total_mib")), **ids)
        placed.add(len(gpu.get("jobs") or []), **ids)

    lines: list[str] = []
    for f in families:
        lines.extend(f.render())
    return "\n".join(lines) + "\n"


def restarts_by_cause(attempts: Iterable[Mapping[str, Any]], state: str) -> dict[str, int]:
    """How many times a job was restarted, by cause: every attempt followed by another one, and the last
    attempt too while the job waits in ``backoff`` for its relaunch.

    An attempt that ended for a terminal cause (completed, stopped) and was
    queued again by a user is not a restart by the supervisor, and not counted;
    nor is a crash that made the job fail (no restart followed).
    """
    ordered = sorted(attempts, key=lambda a: a.get("n") or 0)
    restarted = ordered if state == JobState.BACKOFF.value else ordered[:-1]
    counts: dict[str, int] = {}
    for attempt in restarted:
        cause = attempt.get("reason")
        if cause in RESTART_CAUSES:
            counts[cause] = counts.get(cause, 0) + 1
    return counts


def _mib_to_bytes(value: Any) -> int | None:
    return None if value is None else int(value) * MIB


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items()) + "}"


def _escape_label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
