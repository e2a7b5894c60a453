"""SIGKILL in the middle of a checkpoint save never leaves the manifest pointing at a partial file.

A model with a 128 MB saved buffer makes each save take a noticeable time; the
test kills the trainer while its heartbeat says ``checkpoint`` and the temp
file is being written, checks every
manifest entry, then restarts from the newest entry and checks that the
stale temp files are gone.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
from trainer_testkit import TrainerRun, is_complete_zip, run_trainer, start_trainer

from supervisor.jobfiles.manifest import CheckpointEntry, live_checkpoints, rank_newest

pytestmark = pytest.mark.lightning

HEAVY_MODEL = [
    "model.class_path=trainer.examples.faulty.FaultyDigitsClassifier",
    "model.init_args.ballast_mb=128",
    "checkpoint.every_n_train_steps=4",
    "checkpoint.monitor=null",  # top-k keeps the newest 2: live files from the first save on
    "checkpoint.save_top_k=2",
    "logger.wandb.mode=disabled",
    "trainer.max_epochs=100",
]
PLANTED_TMP = ".epoch=0-step=999.ckpt.tmp"


@dataclass
class KillResult:
    killed: TrainerRun
    returncode: int
    live_after_kill: list[CheckpointEntry]
    # Each live file's size and zip check right after the kill (the restart rewrites last.ckpt).
    files_after_kill: dict[str, tuple[int, bool]]
    tmp_after_kill: list[str]
    restart: TrainerRun
    resumed_from: CheckpointEntry


def saves(run: TrainerRun) -> int:
    return sum(1 for e in run.manifest_events() if e["event"] == "save")


@pytest.fixture(scope="module")
def killed_mid_save(tmp_path_factory: pytest.TempPathFactory) -> KillResult:
    root = tmp_path_factory.mktemp("kill") / "job"
    run = start_trainer(root, HEAVY_MODEL)
    run.wait_for(lambda: saves(run) >= 4, "two completed top-k saves (each with its last.ckpt)")

    ckpt_dir = run.job.checkpoints

    def writing() -> bool:
        # The heartbeat says a save is in progress and its temp file is being written.
        beat = run.heartbeat()
        return beat is not None and beat.phase == "checkpoint" and any(ckpt_dir.glob(".*.tmp"))

    run.wait_for(writing, "a checkpoint file being written", poll=0.005)
    run.send(signal.SIGKILL)
    returncode = run.finish(timeout=30)
    live = live_checkpoints(run.job.manifest)
    files_after_kill = {e.path: (Path(e.path).stat().st_size, is_complete_zip(e.path)) for e in live}
    tmp_after_kill = sorted(p.name for p in ckpt_dir.glob(".*.tmp"))
    # Another stale one, named the way a killed save names its file.
    (ckpt_dir / PLANTED_TMP).write_bytes(b"PK\x03\x04 half a checkpoint")

    newest = rank_newest(live)[0]
    restart = run_trainer(root, [*HEAVY_MODEL, f"trainer.max_steps={newest.step + 3}"],
                          attempt=2, restarts=1, ckpt=newest.path)
    return KillResult(killed=run, returncode=returncode, live_after_kill=live, files_after_kill=files_after_kill,
                      tmp_after_kill=tmp_after_kill,
                      restart=restart, resumed_from=newest)


def test_every_manifest_entry_is_a_complete_file_after_sigkill(killed_mid_save: KillResult) -> None:
    assert killed_mid_save.returncode == -signal.SIGKILL
    assert killed_mid_save.killed.exit_record() is None  # SIGKILL leaves no word, as documented
    live = killed_mid_save.live_after_kill
    assert len(live) == 3  # the newest two top-k files and last.ckpt
    assert killed_mid_save.tmp_after_kill  # the kill did interrupt a write
    for entry in live:
        assert not Path(entry.path).name.startswith("."), entry
        assert killed_mid_save.files_after_kill[entry.path] == (entry.size, True), entry


def test_restart_removes_stale_temp_files_and_resumes(killed_mid_save: KillResult) -> None:
    restart = killed_mid_save.restart
    assert restart.proc.returncode == 0, restart.output()
    record = restart.exit_record()
    assert record is not None
    assert (record.status, record.reason) == ("completed", "max_steps")
    assert record.global_step == killed_mid_save.resumed_from.step + 3
    ckpt_dir = restart.job.checkpoints
    assert sorted(p.name for p in ckpt_dir.glob(".*.tmp")) == []
    # Whatever the kill left (if anything) is never in the manifest.
    named = {Path(e["path"]).name for e in restart.manifest_events() if "path" in e}
    assert not named & {PLANTED_TMP, *killed_mid_save.tmp_after_kill}
    # The final state of the restarted fit was saved as last.ckpt.
    newest = rank_newest(live_checkpoints(restart.job.manifest))[0]
    assert (newest.step, newest.kind, newest.attempt) == (record.global_step, "last", 2)
    assert is_complete_zip(newest.path)
