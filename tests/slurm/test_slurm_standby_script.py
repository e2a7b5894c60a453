"""The batch script's side of a standby per node, with stand-ins for srun and scancel (no Slurm, about a second).

The daemon asks for a standby step (``alloc/standby.sh``); the script starts it beside the
running step; the next step named in ``next.sh`` with ``STEP_STANDBY`` is that step (no new
srun, the handover renamed into place), and a cold next step ends an untaken standby first.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from supervisor.runners.slurm_alloc import render_next_step
from supervisor.runners.slurm_script import render_batch_script
from supervisor.runners.slurm_standby import render_standby_request, standby_problem

SLURM = {"nodes": 2, "ntasks_per_node": 1, "in_allocation_restarts": 3, "hold_s": 20, "setup": []}
# A standby: says ready, waits for the handover in its dir, then "trains" (records who it is).
STANDBY = ('d="$0"; echo "{}" > "$d/standby-ready.json"; while [ ! -e "$d/handover.json" ]; do sleep 0.02; done; '
           'echo "standby of $(basename "$d") took attempt $ML_SUPERVISOR_ATTEMPT ($ML_SUPERVISOR_STANDBY)" >> "$1"')


def _wait(what: Callable[[], bool], limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_script_runs_the_standby_step_and_hands_it_the_next_step(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\necho "$*" >> "$SRUN_LOG"\n'
                                  'while [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n')
    (bin_dir / "scancel").write_text('#!/bin/bash\necho "$*" >> "$SCANCEL_LOG"\nexit 1\n')  # the script kills then
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    attempts, ran = tmp_path / "attempts", tmp_path / "ran"
    first, second, third = (attempts / str(n) for n in (1, 2, 3))
    for d in (first, second, third):
        d.mkdir(parents=True)
    go = tmp_path / "go"
    crash = ("bash", "-c", 'while [ ! -e "$0" ]; do sleep 0.02; done; exit 3', str(go))  # step 1: dies when told
    (first / "slurm-batch.sh").write_text(render_batch_script(job_id="j", attempt_dir=first, workdir=str(tmp_path),
                                                              command=crash, slurm=SLURM))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SRUN_LOG=str(tmp_path / "srun.log"),
               SCANCEL_LOG=str(tmp_path / "scancel.log"), SLURM_JOB_ID="77", SLURM_JOB_NODELIST="n[1-2]",
               SLURM_NNODES="1", SLURMD_NODENAME="n1", SLURM_PROCID="0")
    proc = subprocess.Popen(["bash", str(first / "slurm-batch.sh")], env=env)
    alloc = first / "alloc"
    standby = ("bash", "-c", STANDBY, str(second), str(ran))
    try:
        _wait(lambda: (first / "slurm-step.json").exists())
        # while step 1 runs, the daemon asks for attempt 2's standby: a step of its own, beside step 1
        (alloc / "standby.sh").write_text(render_standby_request(second, [], standby,
                                                                 {"ML_SUPERVISOR_ATTEMPT": "2"}, "j"))
        _wait(lambda: standby_problem(second, 1) is None)
        step_id = json.loads((second / "slurm-standby.json").read_text())["slurm_step_id"]
        go.touch()  # a rank dies: step 1 ends; the allocation is held
        _wait(lambda: (first / "slurm-end.json").exists())
        (second / "handover.pending.json").write_text('{"argv": []}')
        (alloc / "next.sh").write_text(render_next_step(second, [], ("false",), {"ML_SUPERVISOR_ATTEMPT": "2"},
                                                        standby_step=step_id))
        _wait(lambda: (second / "slurm-end.json").exists())
        # attempt 3's standby, then a cold next step (say, on other nodes): the standby is ended first
        third_standby = ("bash", "-c", STANDBY, str(third), str(ran))
        (alloc / "standby.sh").write_text(render_standby_request(third, [], third_standby, {}, "j"))
        _wait(lambda: standby_problem(third, 1) is None)
        cold = ("bash", "-c", 'echo "cold attempt $ML_SUPERVISOR_ATTEMPT" >> "$0"', str(ran))
        (alloc / "next.sh").write_text(render_next_step(third, [], cold, {"ML_SUPERVISOR_ATTEMPT": "3"}))
        _wait(lambda: (third / "slurm-end.json").exists())
        (alloc / "release").touch()
        assert proc.wait(timeout=10) == 0  # the last step's exit code
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ran.read_text() == "standby of 2 took attempt 2 (j)\ncold attempt 3\n"
    step2 = json.loads((second / "slurm-step.json").read_text())
    assert step2["standby"] is True and step2["slurm_step_id"] == step_id == "2"
    ends = [json.loads((d / "slurm-end.json").read_text()) for d in (first, second, third)]
    assert [(e["exit_code"], e["slurm_step_id"]) for e in ends] == [(3, "1"), (0, "2"), (0, "6")]
    # probe, step 1, standby 2, health probe 3 (then standby 2 is attempt 2), standby 4, health probe 5, cold step 6
    srun = (tmp_path / "srun.log").read_text().splitlines()
    assert len(srun) == 7 and "--overlap" in srun[2] and "--overlap" in srun[4] and "--overlap" not in srun[6]
    assert all(line.startswith("--nodes=") and " health " in line for line in (srun[3], srun[5]))
    assert "ML_SUPERVISOR_STANDBY=j" in srun[2] and srun[2].endswith("--standby")
    assert (tmp_path / "scancel.log").read_text() == "--signal=KILL 77.4\n"
    assert json.loads((third / "slurm-standby-end.json").read_text())["exit_code"] == 137  # killed, untaken
    assert not (third / "handover.json").exists() and (alloc / "gone").exists()


def test_a_standby_step_is_usable_only_with_every_rank_ready_and_its_own_step_running(tmp_path: Path) -> None:
    def write(name: str, data: dict[str, object]) -> None:
        (tmp_path / name).write_text(json.dumps(data))

    assert standby_problem(tmp_path, 2) == "the batch script has not started it yet"
    write("slurm-standby.json", {"slurm_step_id": "5"})
    write("standby-ready.rank0.json", {"pid": 1})
    assert standby_problem(tmp_path, 2) == "rank 1 is still preparing"
    write("standby-ready.rank1.json", {"pid": 2, "failed": "ImportError: no module named model"})
    assert standby_problem(tmp_path, 2) == "rank 1 could not prepare: ImportError: no module named model"
    write("standby-ready.rank1.json", {"pid": 2})
    assert standby_problem(tmp_path, 2) is None
    # the end of an earlier standby step in the same dir (a restarted daemon asked again) is not this one's
    write("slurm-standby-end.json", {"slurm_step_id": "4", "exit_code": 137})
    assert standby_problem(tmp_path, 2) is None
    write("slurm-standby-end.json", {"slurm_step_id": "5", "exit_code": 1})
    assert standby_problem(tmp_path, 2) == "its step ended"


def test_the_daemon_asks_for_a_standby_step_and_promotes_it_only_on_the_nodes_it_runs_on(tmp_path: Path) -> None:
    # The runner's side without Slurm: squeue's view, scontrol's node names and sinfo's bad nodes are set here.
    from supervisor.runners.base import AttemptSpec, RankLayout
    from supervisor.runners.slurm import SlurmRunner
    from supervisor.runners.slurm_alloc import Allocation, write_allocation
    from supervisor.runners.slurm_states import QueueEntry

    attempts = tmp_path / "jobs" / "j" / "attempts"
    alloc = attempts / "1" / "alloc"
    alloc.mkdir(parents=True)
    slurm = dict(SLURM, spare_nodes=1)

    def spec(n: int, ckpt: str | None = None) -> AttemptSpec:
        return AttemptSpec(job_id="j", attempt=n, workdir=str(tmp_path), attempt_dir=attempts / str(n),
                           command=("python", "-m", "trainer", "--attempt-dir", str(attempts / str(n)),
                                    *(("--ckpt", ckpt) if ckpt else ())),
                           env={"ML_SUPERVISOR_ATTEMPT": str(n), "HOME": "/x"}, lock_path=tmp_path / "lock",
                           ranks=RankLayout(world_size=2, local_ranks=(0,)), options={"slurm": slurm})

    runner = SlurmRunner(lambda notice: None)
    runner._queue = {"77": QueueEntry("77", "RUNNING", "n[1-3]", "mlsup-j")}
    runner._refresh = lambda force=False: True  # type: ignore[method-assign,misc]
    runner._hostnames = lambda nodelist: ["n1", "n2", "n3"]  # type: ignore[method-assign]
    bad: dict[str, str] = {}
    runner._bad_nodes = lambda nodelist: bad  # type: ignore[method-assign]
    write_allocation(attempts / "1", Allocation("77", str(alloc), restarts=0, nodes=["n1", "n2"]))

    def ready(n: int, step: str) -> None:  # what the script (it takes the request) and the standby's ranks write
        (alloc / "standby.sh").rename(alloc / "standby-taken.sh")
        (attempts / str(n) / "slurm-standby.json").write_text(json.dumps({"slurm_step_id": step}))
        for rank in (0, 1):
            (attempts / str(n) / f"standby-ready.rank{rank}.json").write_text('{"pid": 1}')

    assert runner.prepare(spec(2)) == {"standby": True, "slurm_job_id": "77"}
    request = (alloc / "standby.sh").read_text()
    assert "SB_NODES=n1,n2" in request and "--standby" in request and "HOME" not in request
    ready(2, "2")
    state = runner.promote("j", spec(2, "/ck/step=10.ckpt"))
    assert state is not None and state["standby"] is True and not runner.has_standby("j")
    assert "STEP_STANDBY=2" in (alloc / "next.sh").read_text()
    handover = json.loads((attempts / "2" / "handover.pending.json").read_text())
    assert handover["argv"][-2:] == ["--ckpt", "/ck/step=10.ckpt"] and handover["lock_path"] == ""
    assert handover["env"] == {"ML_SUPERVISOR_ATTEMPT": "2"}
    (alloc / "next.sh").unlink()

    # Attempt 3's standby runs on n1,n2; n2 drains: the next step takes the spare n3 and starts cold.
    assert runner.prepare(spec(3))["standby"] is True
    ready(3, "4")
    bad["n2"] = "drained"
    state = runner.promote("j", spec(3))
    assert state is not None and state["standby"] is False and state["step_nodes"] == "n1,n3"
    assert "STEP_STANDBY" not in (alloc / "next.sh").read_text()
    assert not (attempts / "3" / "handover.pending.json").exists()
    (alloc / "next.sh").unlink()

    # No restart left inside the allocation: no standby is asked for (the next attempt goes to a new one).
    write_allocation(attempts / "1", Allocation("77", str(alloc), restarts=3, nodes=["n1", "n3"]))
    assert runner.prepare(spec(4)) == {} and not (alloc / "standby.sh").exists()
