"""A checkpoint save that meets a full disk (issue 11, item 3): no partial file named, a clear exit record.

Real: a Lightning fit whose checkpoint directory is a small tmpfs, too small
for the first save (a model with a 6 MB buffer on 4 MB), so the save fails
with ENOSPC part-way through.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_testkit import is_complete_zip, run_trainer

from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import live_checkpoints
from tests.support.full_disk import small_tmpfs

pytestmark = pytest.mark.lightning

BIG_MODEL = [
    "model.class_path=trainer.examples.faulty.FaultyDigitsClassifier",
    "model.init_args.ballast_mb=6",
    "checkpoint.every_n_train_steps=5",
    "logger.wandb.mode=disabled",
    "trainer.max_steps=20",
]


def test_a_checkpoint_save_on_a_full_disk_leaves_no_partial_file_and_says_why(tmp_path: Path) -> None:
    root = tmp_path / "job"
    with small_tmpfs(JobLayout(root).checkpoints, size="4m") as ckpt_dir:
        run = run_trainer(root, BIG_MODEL)
        assert run.proc.returncode == 1, run.output()
        record = run.exit_record()
        assert record is not None and record.status == "exception", run.output()
        assert record.exception is not None
        message = record.exception["message"]
        assert "cannot save checkpoint" in message and "disk full" in message and "MiB free" in message, message
        assert sorted(p.name for p in ckpt_dir.glob(".*.tmp")) == []  # the partial file is gone
        for entry in live_checkpoints(run.job.manifest):  # nothing named is partial
            assert is_complete_zip(entry.path), entry.path
