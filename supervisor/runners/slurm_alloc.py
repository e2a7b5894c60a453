"""Restarts inside a Slurm allocation: the daemon's side of the held allocation (docs/slurm.md).

The batch script (``slurm_script``) holds its allocation after a step and runs
whatever next step the daemon writes; this module is what the daemon writes and
decides from:

- the **allocation record** (``attempts/slurm-allocation.json``): the job's current
  allocation (Slurm job id, its control dir, restarts run inside it so far) and
  the nodes found bad, kept for the next allocation's ``--exclude``;
- the **next-step file** (``render_next_step``, pure): the attempt's dir, nodes,
  command and per-attempt variables, sourced by the script;
- the **node choice** (``choose_step_nodes``, pure): keep the last step's good
  nodes, exclude those Slurm shows DOWN/DRAIN, fill up from the spares.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from supervisor.jobfiles.atomic import read_json

ALLOCATION_RECORD = "slurm-allocation.json"
# Slurm's compact node states (sinfo %t) in which no new step may go to the node.
_BAD_STATE_PREFIXES = ("down", "drain", "drng", "drained", "fail", "maint", "boot_fail", "unk", "no_resp")
_WORDS = {"drain": "drained", "drng": "draining", "fail": "failed", "failg": "failing", "maint": "in maintenance"}


@dataclass
class Allocation:
    """The job's current allocation, as the daemon last wrote it."""

    slurm_job_id: str
    alloc_dir: str  # the control dir of the held allocation (``attempts/<first>/alloc``)
    restarts: int = 0  # steps started inside it after its first (what counts against in_allocation_restarts)
    nodes: list[str] = field(default_factory=list)  # the nodes the last step ran on (empty: all of them)
    excluded: list[str] = field(default_factory=list)  # nodes found bad, in this allocation or an earlier one
    # nodes the daemon found bad in this allocation (a node-level rank death, a failed health probe), with why
    faulty: dict[str, str] = field(default_factory=dict)


def allocation_path(attempt_dir: Path) -> Path:
    """Where the job's allocation record lives (beside its attempts' dirs)."""
    return attempt_dir.parent / ALLOCATION_RECORD


def read_allocation(attempt_dir: Path) -> Allocation | None:
    """The job's allocation record, or None (none yet, or unreadable)."""
    data = read_json(allocation_path(attempt_dir))
    if not isinstance(data, dict):
        return None
    try:
        return Allocation(slurm_job_id=str(data["slurm_job_id"]), alloc_dir=str(data["alloc_dir"]),
                          restarts=int(data.get("restarts") or 0), nodes=[str(n) for n in data.get("nodes") or []],
                          excluded=[str(n) for n in data.get("excluded") or []],
                          faulty={str(k): str(v) for k, v in dict(data.get("faulty") or {}).items()})
    except (KeyError, TypeError, ValueError):
        return None


def write_allocation(attempt_dir: Path, allocation: Allocation) -> None:
    """Replace the job's allocation record atomically."""
    path = allocation_path(attempt_dir)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(allocation)))
    os.replace(tmp, path)


def write_atomically(path: Path, text: str) -> None:
    """``text`` into ``path`` by rename: the script never sources half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def render_next_step(attempt_dir: Path, nodes: Sequence[str], command: Sequence[str],
                     env: Mapping[str, str], standby_step: str | None = None) -> str:
    """The next-step file the batch script sources (pure): where the step runs, what, with which variables.

    Only the per-attempt variables (``ML_SUPERVISOR_*``) are exported: the rest of the environment is the
    allocation's, which the daemon built the same way for its first attempt. ``standby_step``: the
    step of the attempt's standby (``slurm_standby``) that takes it over, if it still runs.
    """
    q = shlex.quote
    lines = [f"STEP_DIR={q(str(attempt_dir))}", f"STEP_NODES={q(','.join(nodes))}"]
    exports = sorted((k, v) for k, v in env.items() if k.startswith("ML_SUPERVISOR_"))
    if exports:
        lines.append("export " + " ".join(f"{k}={q(v)}" for k, v in exports))
    lines.append("STEP_CMD=(" + " ".join(q(c) for c in command) + ")")
    if standby_step:
        lines.append(f"STEP_STANDBY={q(standby_step)}")
    return "\n".join(lines) + "\n"


def bad_nodes(sinfo: str) -> dict[str, str]:
    """Nodes ``sinfo -h -N -o "%N %t"`` shows down, drained, draining or failing, with that word (pure)."""
    bad: dict[str, str] = {}
    for line in sinfo.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        state = parts[1].rstrip("*~#!%$@^-").lower()
        if state.startswith(_BAD_STATE_PREFIXES):
            bad[parts[0]] = _WORDS.get(state, state)
    return bad


@dataclass(frozen=True)
class StepNodes:
    """Where the next step runs, and what changed from the last one."""

    nodes: tuple[str, ...]  # empty: the allocation has too few good nodes left
    excluded: tuple[str, ...]  # nodes of the last step left out (bad)
    spares: tuple[str, ...]  # nodes new to this step (spares taken in)


def choose_step_nodes(allocation: Sequence[str], last: Sequence[str], bad: Iterable[str], wanted: int) -> StepNodes:
    """``wanted`` good nodes of the allocation: the last step's good nodes first, then spares, in order (pure)."""
    bad = set(bad)
    last = [n for n in last if n in allocation] or list(allocation[:wanted])
    keep = [n for n in last if n not in bad]
    spares = [n for n in allocation if n not in bad and n not in keep]
    chosen = (keep + spares)[:wanted]
    excluded = tuple(n for n in last if n in bad)
    if len(chosen) < wanted:
        return StepNodes((), excluded, ())
    return StepNodes(tuple(chosen), excluded, tuple(n for n in chosen if n not in last))


def launch_note(slurm_job_id: str, chosen: StepNodes, bad: Mapping[str, str]) -> str:
    """How a restart inside the allocation is told (pure): ``inside allocation 1234 on n1,n3 (n2 drained)``."""
    why = ", ".join(f"{n} {bad.get(n, 'bad')}" for n in chosen.excluded)
    return f"inside allocation {slurm_job_id} on {','.join(chosen.nodes)}" + (f" ({why})" if why else "")


def new_allocation_note(slurm_job_id: str, excluded: Sequence[str]) -> str:
    """How a launch into a new allocation is told (pure): ``in a new allocation 1240 (n2 excluded)``."""
    return f"in a new allocation {slurm_job_id}" + (f" ({', '.join(excluded)} excluded)" if excluded else "")


def node_events(chosen: StepNodes, bad: Mapping[str, str]) -> list[dict[str, str]]:
    """The events a step's node change owes (pure): a node excluded, a spare used."""
    events = [{"kind": "node_excluded", "node": n, "reason": bad.get(n, "bad"),
               "message": f"node {n} excluded from the next step ({bad.get(n, 'bad')})"} for n in chosen.excluded]
    events += [{"kind": "spare_used", "node": n, "message": f"spare node {n} used in place of "
                f"{', '.join(chosen.excluded) or 'a node'}"} for n in chosen.spares]
    return events


def options_of(slurm: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(nodes, spare_nodes, in_allocation_restarts)`` of a ``slurm:`` section."""
    return (int(slurm.get("nodes") or 1), int(slurm.get("spare_nodes") or 0),
            int(slurm.get("in_allocation_restarts") or 0))
