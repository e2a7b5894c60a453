"""A real digits fit through ``python -m trainer``, then a resume from an older checkpoint.

Two processes for the whole module: ``first_fit`` (attempt 1, W&B offline via
the no-API-key fallback) and ``resumed_from_older`` (attempt 2 in the same job
directory, rewinding to the oldest checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from trainer_testkit import DIGITS_CONFIG, TrainerRun, is_complete_zip, run_trainer, trainer_env
from wandb_tables import finished_records

from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.exitrecord import ExitRecord
from supervisor.jobfiles.heartbeat import Heartbeat
from supervisor.jobfiles.manifest import CheckpointEntry, live_checkpoints, rank_best, rank_newest

pytestmark = pytest.mark.lightning

EPOCHS = 3
STEPS_PER_EPOCH = 23  # 1,438 training digits in batches of 64
RUN_ID = "trfit0001"
SECRET_IN_CONFIG = "hunter2-in-the-config"
SECRET_FROM_ENV = "hunter2-from-the-environment"


@dataclass
class FitResult:
    """What attempt 1 left behind, captured before attempt 2 changes the directory."""

    run: TrainerRun
    returncode: int
    exit: ExitRecord | None
    heartbeat: Heartbeat | None
    live: list[CheckpointEntry]
    files: dict[str, int]  # every *.ckpt in the checkpoint dir -> size
    events: list[dict[str, Any]]
    metrics_lines: list[dict[str, Any]]
    stderr: str


def snapshot(run: TrainerRun, returncode: int) -> FitResult:
    ckpt_dir = run.job.checkpoints
    return FitResult(
        run=run,
        returncode=returncode,
        exit=run.exit_record(),
        heartbeat=run.heartbeat(),
        live=live_checkpoints(run.job.manifest),
        files={str(p): p.stat().st_size for p in ckpt_dir.glob("*.ckpt")},
        events=run.manifest_events(),
        metrics_lines=read_json_lines(run.job.attempt(run.attempt).metrics),
        stderr=(run.attempt_dir / "stderr.log").read_text(errors="replace"),
    )


@pytest.fixture(scope="module")
def first_fit(tmp_path_factory: pytest.TempPathFactory) -> FitResult:
    root = tmp_path_factory.mktemp("fit") / "job"
    home = root.parent / "home"
    home.mkdir()
    (home / ".netrc").write_text("")  # an empty netrc: no W&B credentials anywhere
    env = trainer_env(HOME=str(home), NETRC=str(home / ".netrc"), ML_SUPERVISOR_TEST_FROM_ENV=SECRET_FROM_ENV)
    env.pop("WANDB_MODE")  # the config says online: the trainer itself must fall back to offline
    # secrets in the config file (as the daemon freezes it; the command line shows in W&B's metadata)
    config = yaml.safe_load(DIGITS_CONFIG.read_text())
    config.setdefault("env", {})["ML_SUPERVISOR_TEST_TOKEN"] = SECRET_IN_CONFIG
    config.setdefault("ui", {})["note"] = "${oc.env:ML_SUPERVISOR_TEST_FROM_ENV}"
    config_path = root.parent / "digits-with-secrets.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run = run_trainer(root, [f"trainer.max_epochs={EPOCHS}", "logger.wandb.mode=online",
                             f"logger.wandb.run_id={RUN_ID}"], env=env, config=config_path)
    return snapshot(run, run.proc.returncode)


def test_fit_completes_with_exit_record(first_fit: FitResult) -> None:
    assert first_fit.returncode == 0, first_fit.run.output()
    record = first_fit.exit
    assert record is not None
    assert (record.status, record.reason) == ("completed", "max_epochs")
    assert (record.global_step, record.epoch) == (EPOCHS * STEPS_PER_EPOCH, EPOCHS)
    assert record.pid == first_fit.run.proc.pid


def test_heartbeat_ends_done_with_progress_and_metrics(first_fit: FitResult) -> None:
    beat = first_fit.heartbeat
    assert beat is not None
    assert (beat.phase, beat.step, beat.epoch, beat.attempt) == ("done", EPOCHS * STEPS_PER_EPOCH, EPOCHS, 1)
    assert beat.pid == first_fit.run.proc.pid
    assert beat.step_time is not None and beat.max_step_time is not None
    assert 0 < beat.step_time <= beat.max_step_time
    assert {"train_loss", "val_loss", "val_acc"} <= set(beat.metrics)
    assert beat.started_at <= beat.time


def test_metrics_lines_follow_training(first_fit: FitResult) -> None:
    lines = first_fit.metrics_lines
    assert len(lines) >= EPOCHS  # at least a line per validation
    steps = [line["step"] for line in lines]
    assert steps == sorted(steps)
    assert steps[-1] == EPOCHS * STEPS_PER_EPOCH
    assert all(math.isfinite(v) for line in lines for v in line["metrics"].values())
    assert any("val_loss" in line["metrics"] for line in lines)


def test_manifest_matches_the_files_on_disk(first_fit: FitResult) -> None:
    live = first_fit.live
    live_paths = {e.path for e in live}
    # Every live entry's file exists, is complete and has the recorded size...
    for entry in live:
        assert first_fit.files.get(entry.path) == entry.size, entry
        assert is_complete_zip(entry.path)
    # ...and every checkpoint file on disk is a live entry.
    assert set(first_fit.files) == live_paths
    topk = [e for e in live if e.kind == "topk"]
    assert len(topk) == 3  # save_top_k
    assert [e.kind for e in live].count("last") == 1
    removed = {e["path"] for e in first_fit.events if e["event"] == "remove"}
    assert not removed & live_paths
    assert all(not os.path.exists(p) for p in removed)


def test_best_entry_has_the_best_score_and_scores_are_fresh(first_fit: FitResult) -> None:
    live = first_fit.live
    best = rank_best(live)[0]
    scored = [e.score for e in live if e.score is not None]
    assert best.kind == "topk"
    assert best.score == min(scored)
    assert best.monitor == "val_loss" and best.mode == "min"
    # A top-k file is scored with its own weights' validation: the val_loss logged at its step.
    val_loss_at = {line["step"]: line["metrics"]["val_loss"] for line in first_fit.metrics_lines
                   if "val_loss" in line["metrics"]}
    for save in (e for e in first_fit.events if e["event"] == "save" and e["kind"] == "topk"):
        assert save["step"] % STEPS_PER_EPOCH == 0, save  # saved right after a validation
        assert save["score"] == pytest.approx(val_loss_at[save["step"]]), save
    assert rank_newest(live)[0].step == EPOCHS * STEPS_PER_EPOCH


def test_checkpoint_holds_the_step_the_manifest_says(first_fit: FitResult) -> None:
    import torch

    best = rank_best(first_fit.live)[0]
    checkpoint = torch.load(best.path, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == best.step
    assert checkpoint["epoch"] == best.epoch


def recorded_attempt(run_dir: Path) -> int | None:
    """The ``supervisor/attempt`` config value in an offline W&B run file (a protobuf log: the key
    and its JSON value are stored as plain bytes)."""
    match = re.search(rb"supervisor/attempt[^0-9]{1,8}([0-9]+)", (run_dir / f"run-{RUN_ID}.wandb").read_bytes())
    return int(match.group(1)) if match else None


def test_wandb_fell_back_to_offline_under_the_fixed_run_id(first_fit: FitResult) -> None:
    assert "no API key configured" in first_fit.stderr
    wandb_root = first_fit.run.job.wandb_dir
    runs = list(wandb_root.glob(f"wandb/offline-run-*-{RUN_ID}"))
    assert len(runs) == 1, list(wandb_root.rglob("*"))[:20]
    assert recorded_attempt(runs[0]) == 1


def test_the_wandb_run_config_shows_env_names_not_values(first_fit: FitResult) -> None:
    """The job config goes to the W&B run (often shared): env values as <set>, ${oc.env:...} unresolved."""
    (run_dir,) = first_fit.run.job.wandb_dir.glob(f"wandb/offline-run-*-{RUN_ID}")
    data = (run_dir / f"run-{RUN_ID}.wandb").read_bytes()
    assert b"ML_SUPERVISOR_TEST_TOKEN" in data and b"<set>" in data
    assert b"${oc.env:ML_SUPERVISOR_TEST_FROM_ENV}" in data
    assert b"hunter2" not in data


# --- attempt 2: resume from the oldest top-k checkpoint -------------------------------------------


@dataclass
class ResumeResult:
    resumed_from: CheckpointEntry
    newer: list[CheckpointEntry]
    fit: FitResult


@pytest.fixture(scope="module")
def resumed_from_older(first_fit: FitResult) -> ResumeResult:
    assert first_fit.returncode == 0, first_fit.run.output()
    oldest = min((e for e in first_fit.live if e.kind == "topk"), key=lambda e: e.step)
    newer = [e for e in first_fit.live if e.step > oldest.step]
    root = first_fit.run.job.root
    run = run_trainer(root, [f"trainer.max_epochs={EPOCHS}", "logger.wandb.mode=offline",
                             f"logger.wandb.run_id={RUN_ID}"], attempt=2, restarts=1, ckpt=oldest.path)
    return ResumeResult(resumed_from=oldest, newer=newer, fit=snapshot(run, run.proc.returncode))


def test_resume_continues_the_global_step(resumed_from_older: ResumeResult) -> None:
    fit = resumed_from_older.fit
    start = resumed_from_older.resumed_from.step
    assert fit.returncode == 0, fit.run.output()
    assert fit.exit is not None and fit.exit.status == "completed"
    assert fit.exit.global_step == EPOCHS * STEPS_PER_EPOCH
    steps = [line["step"] for line in fit.metrics_lines if "train_loss" in line["metrics"]]
    assert steps and min(steps) > start  # no step before the resume point was retrained
    saves = [e for e in fit.events if e["event"] == "save" and e["attempt"] == 2]
    assert saves and min(e["step"] for e in saves) > start


def test_resume_from_older_moves_newer_checkpoints_aside(resumed_from_older: ResumeResult) -> None:
    fit = resumed_from_older.fit
    point = resumed_from_older.resumed_from
    abandon = [e for e in fit.events if e["event"] == "abandon"]
    assert len(abandon) == 1
    assert abandon[0]["resumed_from"] == point.path and abandon[0]["attempt"] == 2
    assert sorted(abandon[0]["paths"]) == sorted(e.path for e in resumed_from_older.newer)
    aside = fit.run.job.checkpoints / "abandoned" / "2"
    for entry in resumed_from_older.newer:
        moved = aside / Path(entry.path).name
        assert moved.is_file() and moved.stat().st_size == entry.size
    # The old timeline's later checkpoints are gone from "live": what remains is the resume
    # point and older, or files attempt 2 saved itself (names may repeat, entries do not).
    for entry in fit.live:
        assert entry.step <= point.step or entry.attempt == 2, entry
    assert point.path in {e.path for e in fit.live}
    assert set(fit.files) == {e.path for e in fit.live}


def test_resume_continues_the_same_wandb_run(resumed_from_older: ResumeResult) -> None:
    runs = sorted(resumed_from_older.fit.run.job.wandb_dir.glob(f"wandb/offline-run-*-{RUN_ID}"))
    assert [recorded_attempt(r) for r in runs] == [1, 2]  # one run id, one offline segment per attempt


def test_resume_heartbeat_is_attempt_2(resumed_from_older: ResumeResult) -> None:
    beat = resumed_from_older.fit.heartbeat
    assert beat is not None
    assert (beat.attempt, beat.phase, beat.step) == (2, "done", EPOCHS * STEPS_PER_EPOCH)
    assert beat.pid == resumed_from_older.fit.run.proc.pid


def test_resume_heartbeat_marks_the_start_up_milestones_in_order(resumed_from_older: ResumeResult) -> None:
    beat = resumed_from_older.fit.heartbeat
    assert beat is not None
    order = ["imports_done", "checkpoint_loaded", "train_start", "first_step"]
    assert list(sorted(beat.marks, key=beat.marks.__getitem__)) == order
    assert beat.started_at <= beat.marks["imports_done"] <= beat.marks["first_step"] <= beat.time


# --- a fit whose training_step raises --------------------------------------------------------------

CRASH_AT = 5
CRASH_RUN_ID = "trcrash01"
# The user's callback in the crashing fit: at the exception it registers an exit hook and prints
# without flushing (stdout to a file, not unbuffered): the trainer leaves without the interpreter's
# teardown (attempt.exit_now), and neither may be lost.
CRASH_USER = """
import atexit
import os

import pytorch_lightning as pl


class AtTheEnd(pl.Callback):
    def on_exception(self, trainer, pl_module, exception):
        marker = os.path.join(os.environ["ML_SUPERVISOR_ATTEMPT_DIR"], "user-atexit-ran")
        atexit.register(lambda: open(marker, "w").close())
        print("the user's last words, unflushed")
"""


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> TrainerRun:
    root = tmp_path_factory.mktemp("crash") / "job"
    work = root.parent / "work"
    work.mkdir()
    (work / "crashuser.py").write_text(CRASH_USER)
    config = yaml.safe_load(DIGITS_CONFIG.read_text())
    config["workdir"] = str(work)
    config["callbacks"]["extra"] = [{"class_path": "crashuser.AtTheEnd"}]
    config_path = root.parent / "digits-crash.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = trainer_env()
    env.pop("PYTHONUNBUFFERED")
    return run_trainer(root, ["model.class_path=trainer.examples.faulty.FaultyDigitsClassifier",
                              f"model.init_args.crash_at_step={CRASH_AT}", "logger.wandb.mode=offline",
                              f"logger.wandb.run_id={CRASH_RUN_ID}"], config=config_path, env=env)


def test_exception_exits_1_with_the_exception_in_the_record(crashed: TrainerRun) -> None:
    assert crashed.proc.returncode == 1, crashed.output()
    record = crashed.exit_record()
    assert record is not None and record.status == "exception"
    assert record.exception is not None
    assert record.exception["type"] == "InjectedFault"
    assert record.exception["message"] == f"injected crash at global step {CRASH_AT}"
    tail = record.exception["traceback"]
    assert 0 < len(tail) <= 4000
    assert "faulty.py" in tail and "InjectedFault" in tail
    assert record.global_step == CRASH_AT
    # The full traceback went to stderr for the logs.
    assert "Traceback (most recent call last)" in (crashed.attempt_dir / "stderr.log").read_text()
    beat = crashed.heartbeat()
    assert beat is not None and beat.phase == "done" and beat.step == CRASH_AT


def test_the_quick_exit_after_an_exception_loses_no_wandb_data_output_or_exit_hook(crashed: TrainerRun) -> None:
    """The trainer skips the interpreter's teardown after a failure (the next attempt waits for its exit)."""
    assert crashed.proc.returncode == 1, crashed.output()
    (run_dir,) = crashed.job.wandb_dir.glob(f"wandb/offline-run-*-{CRASH_RUN_ID}")
    # complete when the trainer has exited (W&B's teardown waited for wandb-core): no waiting here
    records = finished_records(run_dir, timeout=0)
    steps = [json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "history"
             for item in r.history.item if (list(item.nested_key) or [item.key]) == ["trainer/global_step"]]
    assert steps and max(steps) == CRASH_AT - 1  # log_every_n_steps 5: the last log before the crash
    exits = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert [e.exit_code for e in exits] == [1]
    assert "the user's last words, unflushed" in (crashed.attempt_dir / "stdout.log").read_text()
    assert (crashed.attempt_dir / "user-atexit-ran").exists()
