"""``supervisorctl prune`` (issue 35) on the core in-process: jobs the core finished itself, with real files.

A dry run lists exactly what the real run then removes; a running job, best checkpoints and W&B offline runs
never synced survive; events and delivered alerts go by age (never a live job's); a pruned job cannot be
restarted; and a daemon restarted after a prune adopts the attempt that runs.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.api.ops import Operations
from supervisor.core import Supervisor
from supervisor.errors import JobNotFound, SupervisorError
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import live_checkpoints
from supervisor.rules.states import JobState
from tests.unit.inprocess_core import Core, OpenCore, core_factory

DAY = 86400


@pytest.fixture
def open_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenCore]:
    opened: list[Supervisor] = []
    yield core_factory(tmp_path, monkeypatch, opened)
    for sup in opened:
        sup.close()


def _offline_run(job_dir: str, name: str, *, synced: bool) -> Path:
    run = Path(job_dir) / "wandb" / "wandb" / f"offline-run-20260101_000000-{name}"
    run.mkdir(parents=True)
    (run / f"run-{name}.wandb").write_bytes(b"\0" * 100)
    if synced:
        (run / f"run-{name}.wandb.synced").write_text("")
    return run


def _files(root: str) -> set[str]:
    return {str(Path(d, f)) for d, _dirs, files in os.walk(root) for f in files}


def _history(core: Core, job_id: str) -> tuple[int, int]:
    """(attempts, events) of a job in the store."""
    return len(core.store.attempts(job_id)), len(core.store.events(job_id=job_id, limit=10**6))


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    """What a prune removes and keeps, job by job (the counts the real run reports for each job as well)."""
    jobs = {j["job"]: {k: j[k] for k in ("what", "remove", "keep", "best", "wandb_unsynced", "removed_checkpoints",
                                          "row", "bytes", "attempts", "events", "alerts", "skipped")}
            for j in result["jobs"]}
    return {"jobs": jobs, "totals": result["totals"]}


@pytest.fixture
def old_and_new(open_core: OpenCore) -> tuple[Core, dict[str, str]]:
    """40 days of a daemon: three jobs that ended 40 days ago (one with checkpoints, one with W&B offline runs,
    one with nothing to keep), one that runs since then, one that ended 2 days ago."""
    core = open_core()
    jobs = {"best": core.run_job(checkpoints=4), "wandb": core.run_job(checkpoints=2), "bare": core.run_job()}
    _offline_run(core.store.get_job(jobs["wandb"]).job_dir, "never", synced=False)
    _offline_run(core.store.get_job(jobs["best"]).job_dir, "uploaded", synced=True)
    jobs["running"] = core.submit()
    core.start(jobs["running"])
    core.save_checkpoints(jobs["running"], 3)  # it saves as it goes
    core.clock.advance(38 * DAY)
    core.beat(jobs["running"], step=1000)  # it trains on (a stale heartbeat would be a hang at the next tick)
    jobs["recent"] = core.run_job(checkpoints=3)
    core.clock.advance(2 * DAY)
    core.beat(jobs["running"], step=2000)
    return core, jobs


def test_a_dry_run_lists_exactly_what_the_prune_removes_and_keeps_what_must_stay(
        old_and_new: tuple[Core, dict[str, str]]) -> None:
    core, jobs = old_and_new
    ops = Operations(core.sup)
    running_dir = core.store.get_job(jobs["running"]).job_dir
    running_files, running_history = _files(running_dir), _history(core, jobs["running"])
    recent_history = _history(core, jobs["recent"])
    best_of = {k: core.store.get_job(j).best_checkpoint for k, j in jobs.items()}
    assert best_of["best"] and best_of["best"].endswith("step=15.ckpt")  # the best is not the newest (20)

    args = {"older_than": 30 * DAY, "checkpoints_older_than": DAY}
    dry = ops.op_prune(**args, dry_run=True)
    assert dry["dry_run"] is True
    listed = {j["job"]: j for j in dry["jobs"]}
    assert set(listed) == {jobs["best"], jobs["wandb"], jobs["bare"], jobs["recent"]}  # never the running job
    assert {k: listed[jobs[k]]["what"] for k in ("best", "wandb", "bare", "recent")} == {
        "best": "job", "wandb": "job", "bare": "job", "recent": "checkpoints"}
    assert listed[jobs["bare"]]["row"] == "deleted" and listed[jobs["best"]]["row"] == "kept"
    assert listed[jobs["wandb"]]["wandb_unsynced"] == [
        str(Path(core.store.get_job(jobs["wandb"]).job_dir, "wandb", "wandb", "offline-run-20260101_000000-never"))]
    nothing_removed = {p for j in dry["jobs"] for p in j["remove"] if Path(p).exists()}
    assert nothing_removed == {p for j in dry["jobs"] for p in j["remove"]}  # a dry run removes nothing

    done = ops.op_prune(**args)
    assert done["dry_run"] is False
    assert _comparable(done) == _comparable(dry)
    for j in done["jobs"]:
        assert not any(Path(p).exists() or Path(p).is_symlink() for p in j["remove"]), j["job"]
        assert all(Path(p).exists() for p in j["keep"]), j["job"]

    # best checkpoints stay, the manifest says the others went
    for key in ("best", "wandb", "recent"):
        job = core.store.get_job(jobs[key])
        assert Path(best_of[key] or "").is_file() and job.best_checkpoint == best_of[key]
        assert [e.path for e in live_checkpoints(JobLayout(Path(job.job_dir)).manifest)] == [best_of[key]]
    assert Path(core.store.get_job(jobs["best"]).job_dir, "best.ckpt").resolve() == Path(best_of["best"] or "")
    assert (Path(core.store.get_job(jobs["wandb"]).job_dir) / "wandb" / "wandb").is_dir()  # the unsynced run
    assert not Path(core.store.get_job(jobs["best"]).job_dir, "attempts").exists()
    # the pruned jobs: marked, their history gone; the one with nothing to keep is gone altogether
    for key in ("best", "wandb"):
        assert core.store.get_job(jobs[key]).pruned_at == core.clock() and _history(core, jobs[key]) == (0, 0)
    with pytest.raises(JobNotFound):
        core.store.get_job(jobs["bare"])
    assert not Path(dry["jobs"][0]["job_dir"]).parent.joinpath(jobs["bare"]).exists()
    # untouched: the running job (files, rows), the recent job's history
    assert _files(running_dir) == running_files and _history(core, jobs["running"]) == running_history
    assert core.store.get_job(jobs["running"]).state is JobState.RUNNING
    assert _history(core, jobs["recent"]) == recent_history and core.store.get_job(jobs["recent"]).pruned_at is None
    # a pruned job shows as such, answers status, and is not restarted
    listed_after = {j["id"]: j for j in ops.op_list()}
    assert listed_after[jobs["best"]]["pruned_at"] == core.clock() and jobs["bare"] not in listed_after
    assert ops.op_status(jobs["best"])["state"] == "completed"
    with pytest.raises(SupervisorError, match="was pruned"):
        ops.op_restart(jobs["best"])
    # a second prune finds nothing left
    again = ops.op_prune(**args, dry_run=True)
    assert again["jobs"] == [] and again["totals"]["events"] == again["totals"]["alerts"] == 0


def test_old_events_and_delivered_alerts_go_never_a_live_jobs(old_and_new: tuple[Core, dict[str, str]]) -> None:
    core, jobs = old_and_new
    ops = Operations(core.sup)
    before = {k: _history(core, j) for k, j in jobs.items()}
    args = {"events_older_than": 30 * DAY, "alerts_older_than": 30 * DAY}
    dry = ops.op_prune(**args, dry_run=True)
    assert dry["jobs"] == []
    old_events = sum(before[k][1] for k in ("best", "wandb", "bare"))
    assert dry["totals"]["events"] == old_events > 0 and dry["totals"]["alerts"] == 3  # their endings' alerts
    done = ops.op_prune(**args)
    assert done["totals"] == dry["totals"]
    assert all(_history(core, jobs[k])[1] == 0 for k in ("best", "wandb", "bare"))
    assert _history(core, jobs["running"]) == before["running"]  # 40 days old, but the job lives
    assert _history(core, jobs["recent"]) == before["recent"]
    assert core.store.pending_alerts() == []


def test_a_job_whose_lock_is_held_is_left_alone(old_and_new: tuple[Core, dict[str, str]]) -> None:
    core, jobs = old_and_new
    job_dir = core.store.get_job(jobs["best"]).job_dir
    fd = os.open(JobLayout(Path(job_dir)).lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a live attempt's monitor holds it
    files = _files(job_dir)
    try:
        done = Operations(core.sup).op_prune(older_than=30 * DAY)
    finally:
        os.close(fd)
    (left,) = [j for j in done["jobs"] if j["job"] == jobs["best"]]
    assert left["skipped"] == "a process of the job still holds its lock"
    assert _files(job_dir) == files and core.store.get_job(jobs["best"]).pruned_at is None


def test_a_daemon_restarted_after_a_prune_adopts_what_runs(old_and_new: tuple[Core, dict[str, str]],
                                                           open_core: OpenCore) -> None:
    core, jobs = old_and_new
    Operations(core.sup).op_prune(older_than=30 * DAY, checkpoints_older_than=DAY)
    runner = core.runner
    core.sup.close()
    again = open_core(runner)  # the same trainers, a new daemon
    assert runner.attempts[(jobs["running"], 1)].adopted
    assert again.store.get_job(jobs["running"]).state is JobState.RUNNING
    again.finish(jobs["running"])
    finished = again.store.get_job(jobs["running"])
    assert finished.state is JobState.COMPLETED and finished.best_checkpoint is not None
    assert Path(finished.best_checkpoint).is_file()
    with pytest.raises(JobNotFound):
        again.store.get_job(jobs["bare"])
