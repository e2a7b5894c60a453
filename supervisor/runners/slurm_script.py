"""The batch script of one Slurm attempt (a pure function of the spec and the ``slurm:`` section).

What the script does, and why:

- ``#SBATCH`` lines from the config; ``--no-requeue`` (the daemon is the one owner
  of restarts: Slurm's own requeue would run a second copy beside the daemon's
  resubmission), ``--signal`` so the trainer saves a checkpoint before the time
  limit (SIGUSR1 = save and go on in this project), ``--open-mode=append`` and the
  output in the attempt dir.
- A probe step: every node writes ``probe/<node>`` in the attempt dir and the
  batch node counts them. A state dir the nodes do not share ends the job at once
  with a config error naming it, instead of ranks that never see each other's files.
- ``srun --kill-on-bad-exit=1`` starts the ranks (Lightning's SLURM environment
  reads ``SLURM_PROCID``...), so a dead rank takes its step down with it.
- srun runs in the background and the script ``wait``s in a loop with a TERM
  handler: Slurm sends SIGTERM to the batch shell too at the time limit or on
  ``scancel``, and the script must outlive it long enough to write the end record.
- The end record (``slurm-end.json``, written atomically) keeps the step's exit
  code: ``squeue``/``scontrol`` forget finished jobs after ``MinJobAge`` and
  ``sacct`` is often disabled.
- With ``in_allocation_restarts`` > 0 the script **holds the allocation** after a
  step: it waits (at most ``hold_s``) for the daemon's next-step file
  (``alloc/next.sh``: the next attempt's dir, nodes and command; the daemon decides,
  the script only runs it), runs it as a new ``srun`` step in the same job, and
  again; one step at a time. It leaves on ``alloc/release`` (the job ended), after
  ``hold_s`` without a word, or at once when the allocation itself is ending
  (SIGTERM: time limit, ``scancel``), and writes ``alloc/gone`` as it goes.
  Every step writes ``slurm-step.json`` (its Slurm step id and nodes) as it starts
  and its own end record in its attempt's dir.
- A standby per node (``slurm_standby``): while a step runs the script polls for the
  daemon's ``alloc/standby.sh`` and runs it as a step of its own (``srun --overlap``);
  a next step that names it (``STEP_STANDBY``) is that step, its handover renamed into
  place; a cold next step, and the script's exit, end an untaken one first.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from supervisor.runners.slurm_health import HEALTH_STEP, health_lines

END_RECORD = "slurm-end.json"
STEP_RECORD = "slurm-step.json"
PROBE_DIR = "probe"
ALLOC_DIR = "alloc"  # in the allocation's first attempt dir: the daemon's next-step files and the script's answers
NEXT_STEP = "next.sh"
RELEASE = "release"
GONE = "gone"
STANDBY_REQUEST = "standby.sh"  # the daemon's: start the next attempt's standby step (slurm_standby)
STANDBY_RECORD = "slurm-standby.json"  # in the standby's attempt dir: its step id, as it starts
STANDBY_END = "slurm-standby-end.json"  # ...and its exit code, once its step ended untaken
HANDOVER_PENDING = "handover.pending.json"  # the daemon's handover, renamed into place as the step starts
DEFAULT_HOLD_S = 600
JOB_NAME_PREFIX = "mlsup-"


# Slurm sends ``--signal`` to every step up to its PERIODIC_TIMEOUT (30 s) early: at once when
# the allocation is barely longer than the warning (``time: 1:00``, ``signal: USR1@30``). Until the
# trainer has its handlers, SIGUSR1 (save) and SIGUSR2 (stacks) would kill a rank or the probe with
# the signal's default action, and a dead probe reads as an unshared state dir. Ignored here, and
# inherited as ignored through ``exec``, they are harmless until the trainer installs its own.
_IGNORE_EARLY_SIGNALS = 'trap "" USR1 USR2; '
_RANK_EXPORTS = (_IGNORE_EARLY_SIGNALS + 'export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID" '
                 'WORLD_SIZE="$SLURM_NTASKS" NODE_RANK="$SLURM_NODEID"; exec "$@"')
_PROBE = _IGNORE_EARLY_SIGNALS + 'hostname > "$0/$SLURMD_NODENAME"'


def slurm_job_name(job_id: str) -> str:
    """The Slurm job name of every allocation of ``job_id`` (how a duplicate is found in ``squeue``)."""
    return f"{JOB_NAME_PREFIX}{job_id}"


def sbatch_options(job_id: str, attempt_dir: Path, slurm: Mapping[str, Any],
                   exclude: Sequence[str] = ()) -> list[str]:
    """The ``#SBATCH`` options, in order (pure); ``exclude``: nodes found bad in an earlier allocation."""
    # The attempt's usual log files (``supervisorctl logs -f`` follows them), appended to by every rank.
    opts = [f"--job-name={slurm_job_name(job_id)}", f"--output={attempt_dir / 'stdout.log'}",
            f"--error={attempt_dir / 'stderr.log'}", "--open-mode=append",
            "--no-requeue", f"--nodes={int(slurm['nodes']) + int(slurm.get('spare_nodes') or 0)}",
            f"--ntasks-per-node={int(slurm['ntasks_per_node'])}"]
    if slurm.get("partition"):
        opts.append(f"--partition={slurm['partition']}")
    if int(slurm.get("gpus_per_node") or 0):
        opts.append(f"--gpus-per-node={int(slurm['gpus_per_node'])}")
    if slurm.get("cpus_per_task") is not None:
        opts.append(f"--cpus-per-task={int(slurm['cpus_per_task'])}")
    for key, flag in (("mem", "mem"), ("time", "time"), ("signal", "signal"), ("account", "account"),
                      ("qos", "qos"), ("constraint", "constraint")):
        value = slurm.get(key)
        if value is not None and str(value) != "":
            opts.append(f"--{flag}={value}")
    if exclude:
        opts.append(f"--exclude={','.join(exclude)}")
    opts.extend(str(a) for a in slurm.get("extra_args") or [])
    return opts


def _standby_functions(per_node: int) -> list[str]:
    """The script's side of a standby per node (docs/slurm.md): the daemon asks, the script starts and stops.

    ``alloc/standby.sh`` (``slurm_standby.render_standby_request``) names the next attempt's dir, nodes,
    command (``--standby``) and variables; the script runs it as a step of its own beside the training step
    (``srun --overlap``: its imports share the nodes' CPUs, it never waits for them), records the step's
    id in the standby's dir, and its end (exit code) should it die untaken.
    """
    q = shlex.quote
    record = f"$SB_DIR/{STANDBY_RECORD}"
    ended = f"$SB_DIR/{STANDBY_END}"
    return [
        "SB_PID=''; SB_STEP=''; SB_DIR=''",
        "start_standby() {  # the daemon's request: the next attempt's ranks, prepared, in a step of their own",
        f"    mv -f \"$ALLOC_DIR/{STANDBY_REQUEST}\" \"$ALLOC_DIR/standby-taken.sh\" 2>/dev/null || return 0",
        "    stop_standby",
        "    SB_NODES=''; SB_ENV=(); SB_CMD=()",
        "    . \"$ALLOC_DIR/standby-taken.sh\"  # SB_DIR, SB_NODES, SB_ENV, SB_CMD",
        f"    rm -f \"{ended}\"  # an earlier standby's, in the same dir (a daemon restarted meanwhile)",
        "    SB_OPTS=()",
        "    [ -n \"$SB_NODES\" ] && SB_OPTS=(--nodes=$STEP_NNODES "
        f"--ntasks=$((STEP_NNODES * {per_node})) --ntasks-per-node={per_node} --nodelist=$SB_NODES)",
        "    STEP_NO=$((STEP_NO + 1)); SB_STEP=$STEP_NO",
        "    srun --overlap --kill-on-bad-exit=1 \"${SB_OPTS[@]}\" env \"${SB_ENV[@]}\" bash -c "
        + q(_RANK_EXPORTS) + " rank \"${SB_CMD[@]}\" &",
        "    SB_PID=$!",
        "    printf '{\"slurm_step_id\": \"%s\", \"nodes\": \"%s\", \"started_at\": %s}\\n' \"$SB_STEP\" "
        f"\"$SB_NODES\" \"$(date +%s.%N)\" > \"{record}.tmp\" && mv -f \"{record}.tmp\" \"{record}\"",
        "}",
        "standby_ended() {  # $1: the exit code of a standby step that no attempt took",
        "    printf '{\"slurm_step_id\": \"%s\", \"exit_code\": %s, \"ended_at\": %s}\\n' \"$SB_STEP\" \"$1\" "
        f"\"$(date +%s.%N)\" > \"{ended}.tmp\" && mv -f \"{ended}.tmp\" \"{ended}\"",
        "    SB_PID=''",
        "}",
        "stop_standby() {  # end the standby step (its ranks never trained)",
        "    [ -n \"$SB_PID\" ] || return 0",
        "    scancel --signal=KILL \"$SLURM_JOB_ID.$SB_STEP\" 2>/dev/null || kill -KILL \"$SB_PID\" 2>/dev/null",
        "    wait \"$SB_PID\"; sb_rc=$?",
        "    while kill -0 \"$SB_PID\" 2>/dev/null; do wait \"$SB_PID\"; sb_rc=$?; done",
        "    standby_ended $sb_rc",
        "}",
        "watch_standby() {  # between polls: a standby asked for, a standby step that died",
        f"    [ -e \"$ALLOC_DIR/{STANDBY_REQUEST}\" ] && start_standby",
        "    if [ -n \"$SB_PID\" ] && ! kill -0 \"$SB_PID\" 2>/dev/null; then wait \"$SB_PID\"; standby_ended $?; fi",
        "}",
    ]


def render_batch_script(*, job_id: str, attempt_dir: Path, workdir: str, command: tuple[str, ...],
                        slurm: Mapping[str, Any], exclude: Sequence[str] = ()) -> str:
    """The whole batch script (pure). Its environment is sbatch's (the attempt's), exported to every step."""
    q = shlex.quote
    nodes, per_node = int(slurm["nodes"]), int(slurm["ntasks_per_node"])
    spares = int(slurm.get("spare_nodes") or 0)
    restarts = int(slurm.get("in_allocation_restarts") or 0)
    hold_s = int(slurm.get("hold_s") or DEFAULT_HOLD_S)
    train = "srun --kill-on-bad-exit=1 \"${STEP_OPTS[@]}\" bash -c " + q(_RANK_EXPORTS) + " rank "
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {opt}" for opt in sbatch_options(job_id, attempt_dir, slurm, exclude)]
    lines += [
        "# Written by ml-supervisor: job " + job_id + ". The daemon decides every restart; Slurm never requeues.",
        f"cd {q(workdir)} || exit 1",
        f"ATTEMPT_DIR={q(str(attempt_dir))}",
        f"PROBE_DIR=$ATTEMPT_DIR/{PROBE_DIR}",
        f"ALLOC_DIR=$ATTEMPT_DIR/{ALLOC_DIR}",
        f"END=$ATTEMPT_DIR/{END_RECORD}",
        f"STEP_NNODES={nodes}",
        "signals=''",
        "trap 'signals=\"$signals TERM\"' TERM",
        "trap 'signals=\"$signals USR1\"' USR1",
        "write_end() {  # exit code of the training step, what the script saw; atomically",
        "    printf '{\"slurm_job_id\": \"%s\", \"exit_code\": %s, \"step\": \"%s\", \"nodes\": \"%s\", "
        "\"slurm_step_id\": \"%s\", \"signals\": \"%s\", \"ended_at\": %s}\\n' \"$SLURM_JOB_ID\" \"$1\" "
        "\"$2\" \"$SLURM_JOB_NODELIST\" \"$STEP_ID\" \"${signals# }\" \"$(date +%s.%N)\" > \"$END.tmp\" "
        "&& mv -f \"$END.tmp\" \"$END\"",
        "}",
        "STEP_NO=0  # Slurm numbers a job's steps from 0: the probe is step 0, training and standby steps follow",
        "STEP_ID=0  # the current training step's",
        "begin_step() {  # STEP_DIR, STEP_NODES (empty: Slurm's choice of STEP_NNODES nodes) -> STEP_OPTS, the record",
        "    # $1: the id of a step that runs already (a promoted standby's); else the next srun's",
        "    promoted=false",
        "    if [ -n \"$1\" ]; then STEP_ID=$1; promoted=true; else STEP_NO=$((STEP_NO + 1)); STEP_ID=$STEP_NO; fi",
        "    END=$STEP_DIR/" + END_RECORD,
        "    if [ -n \"$STEP_NODES\" ]; then",
        f"        STEP_OPTS=(--nodes=$STEP_NNODES --ntasks=$((STEP_NNODES * {per_node})) "
        f"--ntasks-per-node={per_node} --nodelist=$STEP_NODES)",
        "        shown=$(scontrol show hostlist \"$STEP_NODES\" 2>/dev/null || echo \"$STEP_NODES\")",
        "    else",
        "        STEP_OPTS=()",
        "        shown=$SLURM_JOB_NODELIST",
        "    fi",
        "    printf '{\"slurm_job_id\": \"%s\", \"slurm_step_id\": \"%s\", \"nodes\": \"%s\", \"standby\": %s, "
        "\"started_at\": %s}\\n' \"$SLURM_JOB_ID\" \"$STEP_ID\" \"$shown\" \"$promoted\" \"$(date +%s.%N)\" "
        "> \"$STEP_DIR/" + STEP_RECORD + ".tmp\" "
        "&& mv -f \"$STEP_DIR/" + STEP_RECORD + ".tmp\" \"$STEP_DIR/" + STEP_RECORD + "\"",
        "}",
        "end_step() {  # $1: the step's srun. Signals interrupt `wait`: wait again until the step has really ended",
        "    step=$1",
        *(["    while kill -0 $step 2>/dev/null; do watch_standby; sleep 0.2; done  # the daemon's standby request"]
          if restarts > 0 else []),
        "    wait $step; rc=$?",
        "    while kill -0 $step 2>/dev/null; do wait $step; rc=$?; done",
        "    write_end $rc train",
        "}",
        *health_lines(),
        *(_standby_functions(per_node) if restarts > 0 else []),
        *slurm.get("setup", []),
        "# Every node writes a probe the batch node must see: the state dir must be on a shared filesystem.",
        "mkdir -p \"$PROBE_DIR\" \"$ALLOC_DIR\"",
        "srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c " + q(_PROBE) + " \"$PROBE_DIR\"",
        "seen=$(ls \"$PROBE_DIR\" | wc -l)",
        "if [ \"$seen\" -lt \"$SLURM_NNODES\" ]; then",
        "    msg=\"the state dir $ATTEMPT_DIR is not on a filesystem every node sees: $seen of $SLURM_NNODES nodes' "
        "probe files are visible from $(hostname) (put --state-dir on the cluster's shared filesystem)\"",
        "    printf '{\"status\": \"config_error\", \"message\": \"%s\", \"time\": %s}\\n' \"$msg\" "
        "\"$(date +%s.%N)\" > \"$ATTEMPT_DIR/exit.json\"",
        "    write_end 2 probe",
        "    touch \"$ALLOC_DIR/" + GONE + "\"",
        "    exit 2",
        "fi",
        "STEP_DIR=$ATTEMPT_DIR",
        # With spares the first step takes the allocation's first nodes; the rest wait as spares.
        ("STEP_NODES=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n $STEP_NNODES | paste -sd, -)"
         if spares else "STEP_NODES=''"),
        "begin_step",
        # The rank variables the trainer's rank awareness reads (Lightning's SLURM environment reads SLURM_*).
        train + " ".join(q(c) for c in command) + " &",
        "end_step $!",
    ]
    if restarts > 0:
        lines += [
            f"# Hold the allocation: the daemon may start its next attempt here, as a new step (at most {hold_s} s).",
            "while :; do",
            "    case \"$signals\" in *TERM*) break;; esac  # the allocation is ending (time limit, scancel)",
            "    SECONDS=0",
            f"    while [ ! -e \"$ALLOC_DIR/{NEXT_STEP}\" ] && [ ! -e \"$ALLOC_DIR/{RELEASE}\" ] "
            f"&& [ $SECONDS -lt {hold_s} ]; do",
            "        case \"$signals\" in *TERM*) break 2;; esac",
            "        watch_standby",
            "        sleep 0.2",
            "    done",
            f"    [ -e \"$ALLOC_DIR/{RELEASE}\" ] && break",
            f"    mv -f \"$ALLOC_DIR/{NEXT_STEP}\" \"$ALLOC_DIR/step-$STEP_NO.sh\" 2>/dev/null || break",
            "    STEP_NODES=''; STEP_STANDBY=''",
            "    . \"$ALLOC_DIR/step-$STEP_NO.sh\"  # STEP_DIR, STEP_NODES, STEP_CMD, STEP_STANDBY, the variables",
            "    if ! health_ok; then write_end 3 " + HEALTH_STEP + "; continue; fi  # the daemon picks other nodes",
            "    # The daemon named this attempt's standby step: its ranks, waiting for the handover, become the step.",
            "    if [ -n \"$STEP_STANDBY\" ] && [ \"$STEP_STANDBY\" = \"$SB_STEP\" ] "
            "&& [ \"$STEP_DIR\" = \"$SB_DIR\" ] && [ -n \"$SB_PID\" ] && kill -0 \"$SB_PID\" 2>/dev/null "
            f"&& mv -f \"$STEP_DIR/{HANDOVER_PENDING}\" \"$STEP_DIR/handover.json\"; then",
            "        begin_step \"$SB_STEP\"",
            "        step=$SB_PID; SB_PID=''",
            "    else  # a cold step; a standby no attempt takes goes first (never two steps that may train)",
            "        stop_standby",
            f"        rm -f \"$STEP_DIR/{HANDOVER_PENDING}\"",
            "        begin_step",
            "        " + train + "\"${STEP_CMD[@]}\" &",
            "        step=$!",
            "    fi",
            "    end_step $step",
            "done",
            "stop_standby",
        ]
    lines += [f"touch \"$ALLOC_DIR/{GONE}\"", "exit $rc"]
    return "\n".join(lines) + "\n"
