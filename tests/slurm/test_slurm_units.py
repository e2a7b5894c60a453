"""The Slurm backend's pure parts: the state table, squeue/sbatch parsing, the end of an attempt,
the batch script's options, and the ``slurm:`` section's checks at submit (no cluster needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.config.loader import load_job_config
from supervisor.errors import ConfigError
from supervisor.rules.causes import Cause
from supervisor.rules.outcome import classify_end
from supervisor.runners.base import Phase
from supervisor.runners.slurm_alloc import (
    bad_nodes,
    choose_step_nodes,
    launch_note,
    new_allocation_note,
    node_events,
    render_next_step,
)
from supervisor.runners.slurm_script import render_batch_script, sbatch_options, slurm_job_name
from supervisor.runners.slurm_states import end_exit, ending_of, parse_sbatch, parse_squeue, phase_of

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "configs" / "digits.yaml"

SLURM = {"nodes": 2, "ntasks_per_node": 8, "gpus_per_node": 8, "cpus_per_task": 8, "mem": "0",
         "time": "24:00:00", "signal": "USR1@120", "partition": "gpu", "account": None, "qos": None,
         "constraint": None, "extra_args": ["--exclusive"], "setup": ["module load cuda"]}


@pytest.mark.parametrize(("state", "phase"), [
    ("PENDING", Phase.PENDING), ("CONFIGURING", Phase.PENDING), ("RUNNING", Phase.RUNNING),
    ("COMPLETING", Phase.RUNNING), ("COMPLETED", Phase.ENDED), ("FAILED", Phase.ENDED),
    ("CANCELLED by 0", Phase.ENDED), ("TIMEOUT", Phase.ENDED), ("NODE_FAIL", Phase.ENDED),
    ("PREEMPTED", Phase.ENDED), ("OUT_OF_MEMORY", Phase.ENDED), ("BOOT_FAIL", Phase.ENDED),
    ("RUNNING+", Phase.RUNNING), ("WHATEVER", None), (None, None),
])
def test_phase_of_every_slurm_state(state: str | None, phase: Phase | None) -> None:
    assert phase_of(state) is phase


@pytest.mark.parametrize(("state", "words"), [
    ("TIMEOUT", "time limit"), ("NODE_FAIL", "node"), ("PREEMPTED", "preempted"),
    ("OUT_OF_MEMORY", "out of memory"), ("BOOT_FAIL", "boot"), ("CANCELLED", "outside the supervisor"),
])
def test_a_slurm_ending_names_itself_in_the_attempts_detail(state: str, words: str) -> None:
    ended = end_exit({"exit_code": 143, "ended_at": 5.0}, state, now=9.0)
    assert ended is not None and ended.exit_code == 143 and ended.signal == "SIGTERM" and ended.ended_at == 5.0
    outcome = classify_end(None, ended, None)
    assert outcome.cause is Cause.CRASH and words in outcome.detail.lower()
    assert ending_of(state).failure


def test_a_failed_step_keeps_the_trainers_own_exception_as_the_detail() -> None:
    ended = end_exit({"exit_code": 1, "ended_at": 5.0}, "FAILED", now=9.0)
    assert ended is not None and ended.error is None and ended.exit_code == 1


def test_end_exit_without_record_or_state_is_a_vanished_attempt() -> None:
    assert end_exit(None, None, now=1.0) is None
    killed = end_exit(None, "CANCELLED", now=1.0)
    assert killed is not None and killed.exit_code is None and "cancelled" in (killed.error or "")
    completed_silently = end_exit(None, "COMPLETED", now=1.0)
    assert completed_silently is not None and "without an end record" in (completed_silently.error or "")


def test_parse_squeue_and_sbatch() -> None:
    text = "12|RUNNING|n[1-2]|mlsup-a-1\n13|PENDING||mlsup-b-2\ngarbage\n\n"
    entries = parse_squeue(text)
    assert sorted(entries) == ["12", "13"]
    assert entries["12"].nodes == "n[1-2]" and entries["13"].state == "PENDING" and entries["13"].name == "mlsup-b-2"
    assert parse_sbatch("4711\n") == "4711" and parse_sbatch("4711;cluster\n") == "4711"
    with pytest.raises(ValueError, match="not a job id"):
        parse_sbatch("sbatch: error: Batch job submission failed")


def test_sbatch_options_come_from_the_slurm_section(tmp_path: Path) -> None:
    opts = sbatch_options("job-1", tmp_path, SLURM)
    assert opts[:1] == [f"--job-name={slurm_job_name('job-1')}"]
    for expected in ("--no-requeue", "--open-mode=append", "--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8",
                     "--cpus-per-task=8", "--mem=0", "--time=24:00:00", "--signal=USR1@120", "--partition=gpu",
                     "--exclusive", f"--output={tmp_path / 'stdout.log'}", f"--error={tmp_path / 'stderr.log'}"):
        assert expected in opts
    assert not any(o.startswith(("--account", "--qos", "--constraint")) for o in opts)
    spared = sbatch_options("job-1", tmp_path, dict(SLURM, spare_nodes=1), exclude=["n2", "n5"])
    assert "--nodes=3" in spared and "--exclude=n2,n5" in spared  # nodes + spares; bad nodes of the last one


def test_the_batch_script_probes_the_shared_filesystem_then_sruns_the_ranks(tmp_path: Path) -> None:
    script = render_batch_script(job_id="job-1", attempt_dir=tmp_path / "attempts" / "1", workdir="/w d",
                                 command=("python", "-m", "trainer", "--config", "c.yaml"), slurm=SLURM)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash" and "#SBATCH --no-requeue" in lines
    assert "cd '/w d' || exit 1" in lines and "module load cuda" in lines
    probe = next(i for i, line in enumerate(lines) if line.startswith("srun --ntasks-per-node=1"))
    train = next(i for i, line in enumerate(lines) if line.startswith('srun --kill-on-bad-exit=1 "${STEP_OPTS[@]}"'))
    assert lines.index("module load cuda") < probe < train
    assert lines[train].endswith("rank python -m trainer --config c.yaml &")
    assert "    write_end $rc train" in lines


def test_a_slurm_section_must_agree_with_the_trainer() -> None:
    with pytest.raises(ConfigError) as err:
        load_job_config(DIGITS, ["supervision.backend=slurm", "slurm.ntasks_per_node=2"])
    assert str(err.value).startswith(f"{DIGITS}: slurm.ntasks_per_node: is 2 but trainer.devices is 1")
    with pytest.raises(ConfigError) as err:
        load_job_config(DIGITS, ["supervision.backend=slurm", "slurm.nodes=2", "trainer.num_nodes=4"])
    assert f"{DIGITS}: slurm.nodes: is 2 but trainer.num_nodes is 4" in str(err.value)
    filled = load_job_config(DIGITS, ["supervision.backend=slurm", "slurm.nodes=3"])
    assert filled.trainer.num_nodes == 3 and filled.trainer.devices == 1


@pytest.mark.parametrize(("override", "key", "words"), [
    ("supervision.backend=kubernetes", "supervision.backend", "must be one of local, slurm"),
    ("slurm.time=tomorrow", "slurm.time", "Slurm's time format"),
    ("slurm.signal=USR1 now", "slurm.signal", "--signal format"),
    ("slurm.nodes=0", "slurm.nodes", "at least 1"),
    ("supervision.gpus=1", "supervision.gpus", "slurm.gpus_per_node"),
    ("slurm.spare_nodes=-1", "slurm.spare_nodes", "at least 0"),
    ("slurm.in_allocation_restarts=-2", "slurm.in_allocation_restarts", "at least 0"),
    ("slurm.hold_s=0", "slurm.hold_s", "at least 1"),
])
def test_bad_slurm_settings_are_one_line_errors(override: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_job_config(DIGITS, ["supervision.backend=slurm", override])
    message = str(err.value)
    assert message.startswith(f"{DIGITS}: {key}: ") and words in message and "\n" not in message


def test_the_trainer_runs_lightnings_slurm_environment_without_auto_requeue() -> None:
    # auto_requeue would `scontrol requeue` on SIGUSR1 and run a second copy beside the daemon's resubmission.
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    from trainer.fit import slurm_plugins

    given = SLURMEnvironment(auto_requeue=True)
    other = object()
    plugins = slurm_plugins([given, other])
    envs = [p for p in plugins if isinstance(p, SLURMEnvironment)]
    assert other in plugins and given not in plugins
    assert len(envs) == 1 and envs[0].auto_requeue is False
    assert [type(p) for p in slurm_plugins(None)] == [SLURMEnvironment]


# A "trainer" that only installs its SIGUSR1 handler 1.5 s after it starts, then checks the handler works.
_LATE_HANDLER = ("import os, signal, sys, time; open(sys.argv[1], 'w').close(); time.sleep(1.5); "
                 "got = []; signal.signal(signal.SIGUSR1, lambda *a: got.append(1)); "
                 "os.kill(os.getpid(), signal.SIGUSR1); sys.exit(0 if got else 3)")


def _step_command(script: str, srun_prefix: str) -> str:
    """One ``srun`` line of the batch script, as the shell command its tasks run (srun and ``&`` dropped)."""
    line = next(line for line in script.splitlines() if line.startswith(srun_prefix))
    return line.removeprefix(srun_prefix).removesuffix(" &")


def _signal_early_and_wait(command: str, started: Path, env: dict[str, str]) -> int:
    """Run ``command`` in bash as a process group, SIGUSR1 + SIGUSR2 the group once it has started, wait."""
    proc = subprocess.Popen(["bash", "-c", command], env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGUSR1)  # as slurmstepd signals every process of the step
    os.killpg(proc.pid, signal.SIGUSR2)
    return proc.wait(timeout=30)


def test_an_early_time_limit_signal_kills_neither_a_rank_before_its_handlers_nor_the_probe(tmp_path: Path) -> None:
    # Slurm may send --signal's SIGUSR1 as the step starts; the trainer installs its handler only later.
    started = tmp_path / "started"
    script = render_batch_script(job_id="job-1", attempt_dir=tmp_path / "attempt", workdir=str(tmp_path),
                                 command=(sys.executable, "-c", _LATE_HANDLER, str(started)), slurm=SLURM)
    env = dict(os.environ, SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NTASKS="1", SLURM_NODEID="0")
    assert _signal_early_and_wait(_step_command(script, "srun --kill-on-bad-exit=1 "), started, env) == 0

    # The probe, with a slow ``hostname`` so the signals reach it mid-probe: it still writes its file.
    bin_dir, probe_dir = tmp_path / "bin", tmp_path / "probe"
    bin_dir.mkdir(), probe_dir.mkdir()
    fake_hostname = bin_dir / "hostname"
    fake_hostname.write_text(f"#!/bin/bash\ntouch {tmp_path / 'probing'}\nsleep 1\necho n1\n")
    fake_hostname.chmod(0o755)
    probe_env = dict(env, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURMD_NODENAME="n1", PROBE_DIR=str(probe_dir))
    probe = _step_command(script, "srun --ntasks-per-node=1 --kill-on-bad-exit=1 ")
    assert _signal_early_and_wait(probe, tmp_path / "probing", probe_env) == 0
    assert (probe_dir / "n1").read_text() == "n1\n"


# -- restarts inside the allocation (slurm_alloc, and the batch script's hold loop) -----------------------

def test_the_next_step_keeps_good_nodes_and_takes_a_spare_for_a_bad_one() -> None:
    alloc = ["n1", "n2", "n3"]
    same = choose_step_nodes(alloc, ["n1", "n2"], set(), 2)
    assert (same.nodes, same.excluded, same.spares) == (("n1", "n2"), (), ())
    moved = choose_step_nodes(alloc, ["n1", "n2"], {"n2"}, 2)
    assert (moved.nodes, moved.excluded, moved.spares) == (("n1", "n3"), ("n2",), ("n3",))
    assert choose_step_nodes(alloc, [], {"n1"}, 2).nodes == ("n2", "n3")  # no last step: the first good ones
    short = choose_step_nodes(alloc, ["n1", "n3"], {"n1", "n2"}, 2)
    assert short.nodes == () and short.excluded == ("n1",)  # too few good nodes: a new allocation
    bad = {"n2": "drained"}
    assert launch_note("1234", moved, bad) == "inside allocation 1234 on n1,n3 (n2 drained)"
    assert new_allocation_note("1240", ["n2"]) == "in a new allocation 1240 (n2 excluded)"
    assert new_allocation_note("1240", []) == "in a new allocation 1240"
    assert [e["kind"] for e in node_events(moved, bad)] == ["node_excluded", "spare_used"]


def test_bad_nodes_reads_sinfos_states() -> None:
    text = "n1 idle\nn2 drain\nn3 down*\nn4 drng\nn5 mix\nn6 alloc\nn7 fail\n"
    assert bad_nodes(text) == {"n2": "drained", "n3": "down", "n4": "draining", "n7": "failed"}


def test_the_batch_script_holds_the_allocation_and_runs_the_daemons_next_steps(tmp_path: Path) -> None:
    # No Slurm: srun and scontrol are stand-ins that log their options and run the step's command here.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The health probe runs once per node of --nodelist (as that node), every other step once.
    (bin_dir / "srun").write_text('#!/bin/bash\necho "$*" >> "$SRUN_LOG"\nnodes=\n'
                                  'for a in "$@"; do case "$a" in --nodelist=*) nodes=${a#--nodelist=};; esac; done\n'
                                  'while [ "${1#--}" != "$1" ]; do shift; done\n'
                                  'case "$*" in *" health timeout "*) ;; *) exec "$@";; esac\n'
                                  'for n in ${nodes//,/ }; do SLURMD_NODENAME=$n "$@"; done\n')
    (bin_dir / "scontrol").write_text('#!/bin/bash\n[ "$2" = hostnames ] && { echo n1; echo n2; echo n3; exit; }\n'
                                      'echo "$3"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    attempts = tmp_path / "attempts"
    first = attempts / "1"
    first.mkdir(parents=True)
    slurm = dict(SLURM, nodes=2, ntasks_per_node=1, spare_nodes=1, in_allocation_restarts=3, hold_s=20, setup=[])
    command = ("bash", "-c", 'echo "attempt $ML_SUPERVISOR_ATTEMPT rank $RANK" >> "$0"', str(tmp_path / "ran"))
    (first / "slurm-batch.sh").write_text(render_batch_script(job_id="j", attempt_dir=first, workdir=str(tmp_path),
                                                              command=command, slurm=slurm))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SRUN_LOG=str(tmp_path / "srun.log"),
               SLURM_JOB_ID="77", SLURM_JOB_NODELIST="n[1-3]", SLURM_NNODES="1", SLURMD_NODENAME="n1",
               SLURM_PROCID="0", ML_SUPERVISOR_ATTEMPT="1")
    proc = subprocess.Popen(["bash", str(first / "slurm-batch.sh")], env=env)
    try:
        alloc = first / "alloc"
        wait = time.monotonic() + 20
        while not (first / "slurm-end.json").exists() and time.monotonic() < wait:
            time.sleep(0.05)
        assert proc.poll() is None  # holding the allocation after its first step
        second = attempts / "2"
        second.mkdir()
        (alloc / "next.sh").write_text(render_next_step(second, ["n1", "n3"], command,
                                                        {"ML_SUPERVISOR_ATTEMPT": "2", "OTHER": "x"}))
        while not (second / "slurm-end.json").exists() and time.monotonic() < wait:
            time.sleep(0.05)
        # n3 cannot write its health probe file (a directory stands in its place: a real write error)
        third = attempts / "3"
        (third / "health" / "n3").mkdir(parents=True)
        (alloc / "next.sh").write_text(render_next_step(third, ["n1", "n3"], command, {"ML_SUPERVISOR_ATTEMPT": "3"}))
        while not (third / "slurm-end.json").exists() and time.monotonic() < wait:
            time.sleep(0.05)
        (alloc / "release").touch()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "ran").read_text() == "attempt 1 rank 0\nattempt 2 rank 0\n"  # attempt 3 never ran
    steps = [json.loads((d / "slurm-step.json").read_text()) for d in (first, second)]
    # step 0: the allocation's probe; a restart's health probe is a step of its own before its ranks' step
    assert [(s["slurm_step_id"], s["nodes"]) for s in steps] == [("1", "n1,n2"), ("3", "n1,n3")]
    assert [(second / "health" / n).read_text() for n in ("n1", "n3")] == ["n1\n", "n3\n"]
    ends = [json.loads((d / "slurm-end.json").read_text()) for d in (first, second, third)]
    assert [(e["exit_code"], e["slurm_step_id"], e["step"]) for e in ends] == [
        (0, "1", "train"), (0, "3", "train"), (3, "4", "health")]
    assert not (third / "slurm-step.json").exists()  # its ranks' step never started
    report = (third / "slurm-health.txt").read_text()
    assert report.startswith(f"n3 cannot write and read back {third / 'health' / 'n3'}: ") and "Is a directory" in \
        report and "n1" not in report, report
    srun = (tmp_path / "srun.log").read_text().splitlines()
    assert "--nodelist=n1,n2" in srun[1] and " health timeout " in srun[2] and "--nodelist=n1,n3" in srun[2]
    assert "--nodelist=n1,n3" in srun[3] and "--nodes=2" in srun[3] and "--kill-on-bad-exit=1" in srun[3]
    assert len(srun) == 5 and " health timeout " in srun[4]  # attempt 3: the probe, and no step after it
    assert (alloc / "gone").exists()


def test_a_step_the_script_has_not_taken_yet_is_withdrawn_not_signalled(tmp_path: Path) -> None:
    # A stop or a kill of an attempt whose next-step file still waits: the file is taken back (the script
    # never runs it) and the attempt's end record written here, so it ends without a Slurm call.
    from supervisor.runners.base import AttemptRef
    from supervisor.runners.slurm import SlurmRunner

    alloc, attempt = tmp_path / "attempts" / "1" / "alloc", tmp_path / "attempts" / "2"
    alloc.mkdir(parents=True), attempt.mkdir()
    (alloc / "next.sh").write_text(render_next_step(attempt, [], ("true",), {}))
    ref = AttemptRef("j", 2, attempt, {"slurm_job_id": "77", "state": "RUNNING", "hold": True,
                                       "alloc_dir": str(alloc)})
    runner = SlurmRunner(lambda notice: None)
    runner.kill(ref)
    assert not (alloc / "next.sh").exists() and (attempt / "slurm-withdrawn.sh").exists()
    end = json.loads((attempt / "slurm-end.json").read_text())
    assert end["step"] == "withdrawn" and end["exit_code"] is None
    # once the script has started the step (its step record), it is no longer withdrawn but signalled
    (alloc / "next.sh").write_text("x")
    (attempt / "slurm-step.json").write_text("{}")
    assert not runner._withdraw_step(ref) and (alloc / "next.sh").exists()
