#!/usr/bin/env bash
# The real-GPU check: run it on a node with an NVIDIA GPU and driver. Not part of the tests (CI has no GPU).
#
#     bench/gpu/check.sh
#
# 1. The real NVML backend (bench/gpu/nvml_check.py): readings of every GPU, the monitor's poll and
#    Xid-event threads starting and stopping cleanly, wait_xid's timeout, a pre-flight listing.
# 2. The digits example on CUDA under supervision, with one SIGKILL of the trainer after its first
#    checkpoint: the supervisor must relaunch it from its best checkpoint and the job must complete.
# 3. Nothing a standby imports loads the CUDA driver (tests/trainer/test_standby_cuda.py, on this node's
#    torch); with FIGURES=1, the restart comparison on CUDA (bench/restart_compare.py --accelerator gpu).
#
# Environment (all optional):
#   PYTHON      interpreter with the project installed (default: .venv/bin/python, else python3)
#   EPOCHS      digits epochs (default 60: long enough to kill it mid-run on a fast GPU)
#   TIMEOUT_S   limit for the supervised run (default 900)
#   KEEP_STATE  1: keep the state directory for inspection (default: removed on success)
#   FIGURES     1: also run bench/restart_compare.py on CUDA (SIGKILL, every contender once: ~5 minutes)
# Exit status: 0 everything passed; 1 a check failed; 2 this node cannot run the check.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PYTHON=${PYTHON:-}
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
EPOCHS=${EPOCHS:-60}
TIMEOUT_S=${TIMEOUT_S:-900}
KEEP_STATE=${KEEP_STATE:-0}
FIGURES=${FIGURES:-0}
# never the simulation here: this check is about the real driver
unset ML_SUPERVISOR_NVML
export WANDB_MODE=offline

say() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { say "FAIL: $*"; exit 1; }
cannot() { say "CANNOT RUN: $*"; exit 2; }
# json FIELD FILE: one field of a JSON file ('' when missing/unreadable)
json() { "$PYTHON" - "$@" <<'EOF'
import json, sys
try:
    value = json.load(open(sys.argv[2]))
    for part in sys.argv[1].split("."):
        value = value[part]
    print(value if not isinstance(value, (list, dict)) else json.dumps(value))
except Exception:
    print("")
EOF
}

# --- prerequisites -------------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || [[ -x "$PYTHON" ]] || cannot "no Python at '$PYTHON' (set PYTHON=...)"
"$PYTHON" -c 'import supervisor.gpu, pynvml' 2>/dev/null \
    || cannot "$PYTHON cannot import the project and pynvml (pip install -e . in that environment)"
if command -v nvidia-smi >/dev/null 2>&1; then
    say "nvidia-smi:"
    timeout 30 nvidia-smi --query-gpu=index,name,uuid,driver_version,temperature.gpu,memory.used,memory.total \
        --format=csv || say "(nvidia-smi failed; going on with NVML directly)"
else
    say "no nvidia-smi on PATH; going on with NVML directly"
fi

# --- 1. NVML ---------------------------------------------------------------------------------------
say "== part 1: the real NVML backend"
set +e
timeout 120 "$PYTHON" bench/gpu/nvml_check.py
rc=$?
set -e
case $rc in
    0) ;;
    2) cannot "NVML is not usable on this node (see above)" ;;
    124) fail "the NVML check did not finish within 120s (a hung NVML call?)" ;;
    *) fail "the NVML check failed (exit $rc)" ;;
esac

# --- 2. supervised digits on CUDA with one SIGKILL -----------------------------------------------------
say "== part 2: digits on CUDA under supervision, one SIGKILL, restart from best"
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
    || cannot "torch in $PYTHON does not see CUDA (a CUDA build of torch is needed for part 2)"
STATE=$(mktemp -d "${TMPDIR:-/tmp}/ml-supervisor-gpu-check.XXXXXX")
LOG="$STATE/run.log"
RUN_PID=""
cleanup() {
    if [[ -n "$RUN_PID" ]] && kill -0 "$RUN_PID" 2>/dev/null; then
        kill -INT "$RUN_PID" 2>/dev/null || true   # the run command stops its job gracefully on Ctrl-C
        sleep 5
        kill -TERM "$RUN_PID" 2>/dev/null || true
    fi
    # trainers live in sessions of their own (they survive the supervisor by design): on a failed check,
    # leave none of ours behind on the GPU. Only pids recorded in this check's own state dir.
    local f pgid
    for f in "$STATE"/jobs/*/attempts/*/monitor.json; do
        [[ -e "$f" && ! -e "$(dirname "$f")/monitor-exit.json" ]] || continue
        pgid=$(json pgid "$f")
        [[ -n "$pgid" ]] && kill -KILL -- "-$pgid" 2>/dev/null || true
    done
}
trap cleanup EXIT
say "state dir $STATE; log $LOG"

# The supervised run (the command the lead's CLI provides). gpus=1: the daemon picks a healthy, free GPU,
# runs pre-flight on it and sets CUDA_VISIBLE_DEVICES.
timeout "$TIMEOUT_S" "$PYTHON" -m supervisor.cli.main --state-dir "$STATE" run configs/digits.yaml \
    trainer.accelerator=gpu trainer.devices=1 supervision.gpus=1 "trainer.max_epochs=$EPOCHS" \
    >"$LOG" 2>&1 &
RUN_PID=$!

# wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds, the run ends, or time is up
wait_for() {
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        if ! kill -0 "$RUN_PID" 2>/dev/null; then tail -40 "$LOG"; fail "the run ended while waiting for: $what"; fi
        if ((SECONDS >= deadline)); then tail -40 "$LOG"; fail "no $what within ${limit}s"; fi
        sleep 0.5
    done
}
attempt_file() { compgen -G "$STATE/jobs/*/attempts/$1/$2" | head -1; }
has_attempt_file() { [[ -n "$(attempt_file "$1" "$2")" ]]; }
has_checkpoint() { compgen -G "$STATE/jobs/*/checkpoints/manifest.jsonl" >/dev/null \
    && grep -q '"event":"save"' "$STATE"/jobs/*/checkpoints/manifest.jsonl; }

wait_for 600 "trainer start (attempt 1)" has_attempt_file 1 monitor.json
TRAINER=$(json trainer_pid "$(attempt_file 1 monitor.json)")
[[ -n "$TRAINER" ]] || fail "attempt 1 has no trainer pid"
say "attempt 1: trainer pid $TRAINER"
wait_for 600 "first checkpoint" has_checkpoint
say "first checkpoint saved: $(grep -c '"event":"save"' "$STATE"/jobs/*/checkpoints/manifest.jsonl) save(s) so far"

say "processes on the GPUs (the trainer should be one):"
timeout 30 nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader 2>/dev/null || true
"$PYTHON" - "$TRAINER" <<'EOF' || fail "the trainer is not on any GPU: it did not run on CUDA"
import sys
from supervisor.gpu import NvmlBackend
backend = NvmlBackend()
pid = int(sys.argv[1])
found = [(i, p.used_mib) for i in range(backend.device_count()) for p in backend.read(i).processes if p.pid == pid]
backend.close()
print(f"  trainer {pid} on GPU(s) {found}")
sys.exit(0 if found else 1)
EOF
kill -0 "$TRAINER" 2>/dev/null || fail "the trainer finished before we could kill it (raise EPOCHS)"

say "SIGKILL to the trainer $TRAINER"
kill -KILL "$TRAINER"
wait_for 600 "relaunch (attempt 2)" has_attempt_file 2 monitor.json
RESUMED=$("$PYTHON" - "$(attempt_file 2 monitor.json)" <<'EOF'
import json, sys
command = json.load(open(sys.argv[1])).get("command", [])
print(command[command.index("--ckpt") + 1] if "--ckpt" in command else "")
EOF
)
[[ -n "$RESUMED" ]] || fail "attempt 2 did not resume from a checkpoint"
say "attempt 2 resumed from $RESUMED"

say "waiting for the job to end (limit ${TIMEOUT_S}s overall)"
set +e
wait "$RUN_PID"
rc=$?
set -e
RUN_PID=""
say "the run's output:"
sed 's/^/    /' "$LOG"
((rc != 124)) || fail "the supervised run did not end within ${TIMEOUT_S}s"
((rc == 0)) || fail "the supervised run ended with exit status $rc (0 = completed)"
grep -qi "restart" "$LOG" || say "(note: no 'restart' line in the run's output)"

if [[ "$KEEP_STATE" != 1 ]]; then rm -rf "$STATE"; else say "state kept in $STATE"; fi

# --- 3. the standby on a GPU, and the restart figures --------------------------------------------------
say "== part 3: a standby must not touch CUDA before its handover"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/trainer/test_standby_cuda.py \
    || fail "CUDA is loaded where a standby must not load it (see the test's output)"
if [[ "$FIGURES" == 1 ]]; then
    say "SIGKILL -> first optimizer step of the successor on CUDA: loop, torchrun, standby off, standby on"
    timeout 900 "$PYTHON" bench/restart_compare.py --rounds 1 --kind sigkill --accelerator gpu \
        || fail "the restart comparison on CUDA failed"
fi

say "== GPU check: PASS (NVML readings, Xid thread start/stop, CUDA run killed and resumed from $RESUMED, no CUDA in a standby)"
