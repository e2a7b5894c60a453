"""The page's sweep routes: list, one sweep, stop, and starting a sweep from a template with knob ranges.

    GET  /api/sweeps                 every sweep's status object (``supervisorctl sweep list --json``)
    GET  /api/sweeps/{sweep}         one sweep's status object
    POST /api/sweeps/{sweep}/stop    no new trials; running ones stop
    POST /api/sweeps                 {template, method, metric, goal, run_cap, parallel, seed?, name?,
                                      ranges: {knob key: {values: [...]} | {min, max, log?}}} -> the sweep (201)

As with ``/api/launch``, only a template's knobs can be searched, and every value
or bound must be one the knob accepts: the page cannot set any other config key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from supervisor.api.ops import Operations
from supervisor.web.templates import Template, find_template, plan_launch

Route = Callable[..., Callable[[Any], Any]]


class KnobRange(BaseModel):
    """The values a sweep tries for one knob: a list, or a range (``log``: log-uniform)."""

    model_config = ConfigDict(extra="forbid")

    values: list[Any] | None = Field(default=None, max_length=100)
    min: float | None = None
    max: float | None = None
    log: bool = False


class SweepLaunch(BaseModel):
    """What the page sends to start a sweep."""

    model_config = ConfigDict(extra="forbid")

    template: str = Field(min_length=1, max_length=64)
    name: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    method: Literal["grid", "random", "bayes"]
    metric: str = Field(min_length=1, max_length=100)
    goal: Literal["minimize", "maximize"] = "minimize"
    run_cap: int | None = Field(default=None, ge=1, le=10000)
    parallel: int = Field(default=1, ge=1, le=64)
    seed: int | None = None
    ranges: dict[str, KnobRange] = Field(min_length=1)


def add_sweep_routes(api_get: Route, api_post: Route, ops: Operations, *, templates_path: Path, cwd: Path,
                     error: Callable[[int, str, str, dict[str, str] | None], Exception]) -> None:
    """Register the sweep routes (``api_get`` / ``api_post`` add the token check)."""

    @api_get("/sweeps")
    def sweeps() -> list[dict[str, Any]]:
        return ops.op_sweep_list()

    @api_get("/sweeps/{sweep}")
    def sweep_status(sweep: str) -> dict[str, Any]:
        return ops.op_sweep_status(sweep)

    @api_post("/sweeps/{sweep}/stop")
    def sweep_stop(sweep: str) -> dict[str, Any]:
        return ops.op_sweep_stop(sweep)

    @api_post("/sweeps", status_code=201)
    def sweep_launch(body: SweepLaunch) -> dict[str, Any]:
        template = find_template(templates_path, body.template)
        if template is None:
            raise error(404, "template_not_found", f"no template {body.template!r} in {templates_path}", None)
        if template.error:
            raise error(409, "template_invalid", template.error, None)
        parameters, problems = sweep_parameters(template, body.ranges)
        if problems:
            raise error(422, "config_invalid", "some ranges are not accepted", problems)
        data: dict[str, Any] = {"config": template.path.name, "name": body.name or f"{template.name}-sweep",
                                "method": body.method, "metric": {"name": body.metric, "goal": body.goal},
                                "parallel": body.parallel, "parameters": parameters}
        for key in ("run_cap", "seed"):
            if getattr(body, key) is not None:
                data[key] = getattr(body, key)
        # A sweep file beside the template, in memory: `config:` resolves to the template.
        source = str(template.path.parent / f"{template.name}.sweep.yaml")
        return ops.op_sweep_create(sweep_path=source, cwd=str(cwd), sweep_text=yaml.safe_dump(data))


def sweep_parameters(template: Template, ranges: dict[str, KnobRange]) -> tuple[dict[str, Any], dict[str, str]]:
    """The sweep's ``parameters`` from knob ranges, and the problem of each refused knob."""
    parameters: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for key, spec in ranges.items():
        if template.knob(key) is None:
            problems[key] = f"not a knob of template {template.name}"
            continue
        if spec.values is not None:
            if spec.min is not None or spec.max is not None or not spec.values:
                problems[key] = "give a non-empty list of values, or min and max"
                continue
            tried = spec.values
            parameters[key] = {"values": spec.values}
        elif spec.min is not None and spec.max is not None:
            tried = [spec.min, spec.max]
            bounds = [int(b) if template.knob(key).type == "int" else b for b in tried]  # type: ignore[union-attr]
            parameters[key] = {"min": bounds[0], "max": bounds[1]}
            if spec.log:
                parameters[key]["distribution"] = "log_uniform_values"
        else:
            problems[key] = "give a list of values, or min and max"
            continue
        for value in tried:  # each value, or both bounds, must be one the knob accepts
            plan = plan_launch(template, {key: value})
            if key in plan.errors:
                problems[key] = f"{value!r}: {plan.errors[key]}"
                break
    return parameters, problems
