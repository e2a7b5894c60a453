"""Nodes of a held allocation found bad by the daemon itself, beyond what Slurm shows (docs/slurm.md).

Two findings leave a node out of the next step (a spare takes its place; with none left the
allocation is given back and the next one is submitted with ``--exclude`` of it):

- a rank of the last step died of a **node-level cause** (``rules.node_faults``: an
  uncorrectable ECC error, a lost GPU, a filesystem turned read-only...), read from the
  ranks' exit records and mapped to its node by srun's block distribution;
- the step's **health probe** failed on the node: before a restart's ranks start, the batch
  script has every node of the step write and read back a file in the step's attempt dir
  within ``HEALTH_S`` seconds (``health_lines``); a node that fails or does not answer is
  written, one line each, to ``slurm-health.txt``, and the step ends there (its ranks never
  start, its end record says ``"step": "health"``).

The daemon reads both, bounded (``safe_read``), and decides; the script only reports.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from supervisor.jobfiles.deadline import FileStalled
from supervisor.jobfiles.exitrecord import read_exit_record
from supervisor.jobfiles.layout import AttemptLayout
from supervisor.jobfiles.monitorfiles import MonitorExit
from supervisor.jobfiles.safe_read import read_file
from supervisor.rules.node_faults import faulty_nodes

HEALTH_REPORT = "slurm-health.txt"  # in the step's attempt dir: "<node> <why>" per node that failed the probe
HEALTH_DIR = "health"  # in the step's attempt dir: each node's probe file
HEALTH_STEP = "health"  # the end record's "step" when the probe, not the ranks, ended the step
HEALTH_S = 5  # each node's write and read back, at most (a shared filesystem that hangs fails it)
REPORT_CAP = 4096  # the script writes at most this much of the report; the daemon reads no more
_WHY_CHARS = 300


def parse_health(text: str, nodes: Sequence[str]) -> dict[str, str]:
    """Node -> why, from the report's lines (pure); only nodes of ``nodes``, each once, each why bounded."""
    failed: dict[str, str] = {}
    for line in text.splitlines():
        node, _, why = line.strip().partition(" ")
        if node in nodes and node not in failed:
            failed[node] = f"health probe failed: {why.strip()[:_WHY_CHARS] or 'no reason given'}"
    return failed


def read_health(attempt_dir: Path, nodes: Sequence[str]) -> dict[str, str]:
    """The step's health report (``parse_health``), read bounded; {} when none (or it does not answer)."""
    try:
        data = read_file(attempt_dir / HEALTH_REPORT, REPORT_CAP)
    except (FileStalled, OSError):
        return {}
    return parse_health(data.decode(errors="replace"), nodes) if data else {}


def step_faults(attempt_dir: Path, step_nodes: Sequence[str], per_node: int, world_size: int) -> dict[str, str]:
    """Node -> why for the nodes the step in ``attempt_dir`` found bad: its health probe, its ranks' causes.

    ``step_nodes``: the step's nodes in Slurm's order (node ``i`` ran ranks ``i*per_node`` ..).
    """
    layout = AttemptLayout(attempt_dir)
    try:
        records = {rank: read_exit_record(layout.exit_record_of(rank)) for rank in range(max(1, world_size))}
    except (FileStalled, OSError):
        records = {}
    found = {**faulty_nodes(records, step_nodes, per_node), **read_health(attempt_dir, step_nodes)}
    # Every node of a several-node step at once: the shared filesystem (or the job), not the nodes.
    return {} if len(step_nodes) > 1 and set(found) >= set(step_nodes) else found


def submit_excludes(still_bad: Mapping[str, str], faulty: Mapping[str, str]) -> list[str]:
    """The ``--exclude`` of a new allocation (pure): nodes found bad that Slurm still shows bad (one an admin
    returned comes back), and those the daemon found bad in the allocation before (left out of the next one)."""
    return sorted(set(still_bad) | set(faulty))


def leave_out(sinfo_bad: Mapping[str, str], found: Mapping[str, str], earlier: Mapping[str, str]) -> dict[str, str]:
    """The nodes the next step must not use, with why (pure): Slurm's word first, then what the daemon found
    now, then what it found earlier in this allocation (a node once found bad stays out of it)."""
    return {**earlier, **found, **sinfo_bad}


def health_exit(attempt_dir: Path, nodes: Sequence[str], ended: MonitorExit | None) -> MonitorExit | None:
    """A step the health probe ended: its exit says which nodes failed and why."""
    failed = read_health(attempt_dir, nodes)
    words = "; ".join(f"{node}: {why}" for node, why in failed.items()) or "health probe failed"
    error = f"the step did not start ({words})"
    return replace(ended, error=error) if ended is not None else None


def health_lines(per_node_timeout_s: int = HEALTH_S) -> list[str]:
    """The batch script's ``health_ok`` function (``slurm_script``): every node of the step writes and reads
    back a file in the step's dir; a node that fails, or does not answer in time, is reported and the step
    is not started. Uses ``STEP_DIR``, ``STEP_NODES``, ``STEP_NNODES``; counts its srun in ``STEP_NO``
    (and ``STEP_ID``: a failed probe's end record names its step)."""
    # The reason alone ("Is a directory"): the shell's "bash: line 1: PATH: " prefix repeats a long path.
    probe = ('trap "" USR1 USR2; n=$SLURMD_NODENAME; f=$0/$n; '
             'if err=$( { printf "%s\\n" "$n" > "$f" && [ "$(cat "$f")" = "$n" ]; } 2>&1 ); then echo "ok $n"; '
             'else echo "fail $n cannot write and read back $f: '
             '$(printf "%s" "${err##*: }" | tr "\\n" " " | head -c 200)"; fi')
    t = per_node_timeout_s
    return [
        "health_ok() {  # before a restart's ranks start: each node of the step writes and reads back a file",
        "    STEP_NO=$((STEP_NO + 1)); STEP_ID=$STEP_NO; END=$STEP_DIR/slurm-end.json; hdir=$STEP_DIR/" + HEALTH_DIR,
        "    mkdir -p \"$hdir\"",
        "    if [ -n \"$STEP_NODES\" ]; then hopts=(--nodes=$STEP_NNODES --ntasks=$STEP_NNODES "
        "--nodelist=$STEP_NODES); want=${STEP_NODES//,/ }",
        "    else hopts=(--nodes=$SLURM_NNODES --ntasks=$SLURM_NNODES); "
        "want=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\"); fi",
        # SIGUSR1/2 (an early --signal) ignored before `timeout` runs: inherited through exec, as for the ranks
        f"    out=$(timeout -s KILL {t + 10} srun \"${{hopts[@]}}\" --ntasks-per-node=1 --kill-on-bad-exit=0 "
        f"bash -c 'trap \"\" USR1 USR2; exec \"$@\"' health timeout -s KILL {t} bash -c {shlex.quote(probe)} "
        f"\"$hdir\" 2>/dev/null | head -c {REPORT_CAP})",
        "    report=''",
        "    for n in $want; do",
        "        line=$(printf '%s\\n' \"$out\" | grep -m1 -E \"^(ok|fail) $n( |\\$)\")",
        "        case \"$line\" in",
        "            \"ok $n\") ;;",
        "            \"fail $n \"*) report=\"$report$n ${line#fail $n }\"$'\\n' ;;",
        f"            *) report=\"$report$n no answer within {t} s\"$'\\n' ;;",
        "        esac",
        "    done",
        "    [ -z \"$report\" ] && return 0",
        f"    printf '%s' \"$report\" | head -c {REPORT_CAP} > \"$STEP_DIR/{HEALTH_REPORT}\"",
        "    return 1",
        "}",
    ]
