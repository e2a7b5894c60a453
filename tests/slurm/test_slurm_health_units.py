"""Nodes the daemon finds bad itself (no cluster needed): a node-level rank death and a failed health probe
leave the node out of the next step (a spare takes it), and out of the fallback allocation when none is left."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from supervisor.jobfiles.monitorfiles import MonitorExit
from supervisor.runners.base import AttemptSpec, RankLayout
from supervisor.runners.slurm import SlurmRunner
from supervisor.runners.slurm_alloc import Allocation, choose_step_nodes, read_allocation, write_allocation
from supervisor.runners.slurm_health import (
    REPORT_CAP,
    health_exit,
    leave_out,
    parse_health,
    read_health,
    step_faults,
    submit_excludes,
)


def _exit_record(path: Path, rank: int, message: str) -> None:
    path.write_text(json.dumps({"status": "exception", "time": 1.0, "pid": 9, "rank": rank,
                                "exception": {"type": "RuntimeError", "message": message}}))


def test_a_node_whose_rank_died_of_a_node_fault_or_that_failed_the_probe_is_left_out(tmp_path: Path) -> None:
    step = tmp_path / "2"
    step.mkdir()
    # two ranks per node on n1,n2: rank 3 (n2) lost its GPU; rank 1 (n1) died of the job's own error
    _exit_record(step / "exit.rank1.json", 1, "ValueError: bad batch")
    _exit_record(step / "exit.rank3.json", 3, "CUDA error: GPU is lost")
    assert step_faults(step, ["n1", "n2"], 2, 4) == {"n2": "node fault: GPU lost (rank 3)"}
    # the health probe's report: only the step's nodes count, each once
    (step / "slurm-health.txt").write_text("n3 cannot write and read back /s/health/n3: Is a directory\n"
                                           "n9 spoofed\nn3 again\n")
    assert step_faults(step, ["n1", "n3"], 2, 4) == {
        "n3": "health probe failed: cannot write and read back /s/health/n3: Is a directory"}
    # a finding on every node of the step blames none of them (the shared filesystem, or the job)
    (step / "slurm-health.txt").write_text("n1 no answer within 5 s\nn3 no answer within 5 s\n")
    assert step_faults(step, ["n1", "n3"], 2, 4) == {}
    # the node choice: the found node and the earlier one stay out, a spare takes the place
    bad = leave_out({}, {"n2": "node fault: GPU lost (rank 3)"}, {"n4": "health probe failed: x"})
    chosen = choose_step_nodes(["n1", "n2", "n3", "n4"], ["n1", "n2"], bad, 2)
    assert (chosen.nodes, chosen.excluded, chosen.spares) == (("n1", "n3"), ("n2",), ("n3",))
    assert leave_out({"n2": "drained"}, {"n2": "node fault: x"}, {})["n2"] == "drained"  # Slurm's word first


def test_with_no_spare_left_the_fallback_allocation_excludes_the_bad_node(tmp_path: Path) -> None:
    bad = leave_out({}, {"n2": "health probe failed: no answer within 5 s"}, {})
    assert choose_step_nodes(["n1", "n2"], ["n1", "n2"], bad, 2).nodes == ()  # too few: a new allocation
    attempt = tmp_path / "attempts" / "3"
    attempt.mkdir(parents=True)
    write_allocation(attempt, Allocation("41", "/a", 1, ["n1", "n2"], ["n2"], dict(bad)))
    previous = read_allocation(attempt)
    assert previous is not None and previous.faulty == dict(bad)
    # sinfo shows n2 idle (the daemon's own finding, not Slurm's): excluded all the same
    assert submit_excludes({}, previous.faulty) == ["n2"]
    assert submit_excludes({"n7": "down"}, {"n2": "x"}) == ["n2", "n7"]


def test_the_probe_report_is_read_bounded_and_a_failed_probe_says_so_in_the_attempt_s_end(tmp_path: Path) -> None:
    assert parse_health("n2 " + "x" * 5000 + "\n", ["n2"])["n2"].endswith("x" * 10)
    assert len(parse_health("n2 " + "x" * 5000 + "\n", ["n2"])["n2"]) < 400
    (tmp_path / "slurm-health.txt").write_text("n2 no answer within 5 s\n" + "n1 junk\n" * REPORT_CAP)
    assert read_health(tmp_path, ["n1", "n2"]) == {}  # over the cap: not read at all
    (tmp_path / "slurm-health.txt").write_text("n2 no answer within 5 s\n")
    ended = health_exit(tmp_path, ["n1", "n2"], MonitorExit(exit_code=3, signal=None, ended_at=1.0))
    assert ended is not None and ended.error == (
        "the step did not start (n2: health probe failed: no answer within 5 s)")


def test_a_fallback_slurm_refuses_for_the_daemons_exclusions_is_submitted_without_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No Slurm: squeue, sinfo and sbatch are stand-ins. sinfo shows n2 idle (the daemon's own finding, not
    # Slurm's); sbatch refuses a script that excludes n2 (too few nodes left), as a small partition would.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/bash\nexit 0\n")
    (bin_dir / "sinfo").write_text("#!/bin/bash\necho 'n2 idle'\n")
    (bin_dir / "sbatch").write_text('#!/bin/bash\necho "$2" >> "$SBATCH_LOG"\ngrep -q -- "--exclude=n2" "$2" && '
                                    '{ echo "sbatch: error: Requested node configuration is not available" >&2; '
                                    'exit 1; }\necho 55\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    log = tmp_path / "sbatch.log"
    attempt = tmp_path / "attempts" / "4"
    attempt.mkdir(parents=True)
    write_allocation(attempt, Allocation("41", str(tmp_path / "attempts" / "1" / "alloc"), 3, ["n1", "n2"], ["n2"],
                                         {"n2": "health probe failed: no answer within 5 s"}))
    slurm = {"nodes": 2, "ntasks_per_node": 1, "in_allocation_restarts": 3}
    env = {"SBATCH_LOG": str(log), "PATH": os.environ["PATH"]}
    spec = AttemptSpec(job_id="j", attempt=4, command=("true",), env=env,
                       workdir=str(tmp_path), attempt_dir=attempt, lock_path=tmp_path / "lock",
                       ranks=RankLayout(world_size=2), options={"slurm": slurm})
    state = SlurmRunner(lambda notice: None).launch(spec)
    assert state["slurm_job_id"] == "55" and state["excluded"] == []
    assert len(log.read_text().splitlines()) == 2  # refused with --exclude=n2, then taken without it
    assert "--exclude" not in (attempt / "slurm-batch.sh").read_text()
