"""The trainer's own divergence paths, without the daemon: a user's anomaly detection and EarlyStopping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.exitrecord import read_exit_record
from supervisor.jobfiles.layout import EXIT_DIVERGED
from tests.support.harness import REPO

pytestmark = pytest.mark.lightning

FAULTY = "model.class_path=trainer.examples.faulty.FaultyDigitsClassifier"


def _fit(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trainer", "--config", str(REPO / "configs/digits.yaml"),
                           "--attempt-dir", str(tmp_path / "a1"), "--checkpoint-dir", str(tmp_path / "ckpt"),
                           FAULTY, "logger.wandb.mode=disabled", "trainer.max_epochs=3",
                           "checkpoint.every_n_train_steps=10", *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=240)


def test_detect_anomaly_on_a_nan_is_a_divergence_not_a_crash(tmp_path: Path) -> None:
    run = _fit(tmp_path, "trainer.detect_anomaly=true", "model.init_args.nan_at_step=25")
    assert run.returncode == EXIT_DIVERGED, run.stderr[-2000:]
    record = read_exit_record(tmp_path / "a1" / "exit.json")
    assert record is not None and record.status == "diverged"
    assert record.divergence is not None and record.divergence["check"] == "anomaly"
    marks = [e for e in read_json_lines(tmp_path / "ckpt" / "manifest.jsonl") if e.get("event") == "unusable"]
    assert [m["from_step"] for m in marks] == [record.diverged_at]


def test_early_stopping_on_a_non_finite_val_loss_is_a_divergence_not_finished(tmp_path: Path) -> None:
    run = _fit(tmp_path, "callbacks.early_stopping.monitor=val_loss", "model.init_args.nan_val_at_epoch=1")
    assert run.returncode == EXIT_DIVERGED, run.stderr[-2000:]
    record = read_exit_record(tmp_path / "a1" / "exit.json")
    assert record is not None and record.status == "diverged" and record.reason is None
    assert record.divergence is not None and record.divergence["check"] == "non_finite_metric"
    # stopped at the end of epoch 1 (steps 23..46), not at max_epochs
    assert record.diverged_at is not None and 23 <= record.diverged_at <= 46


def test_with_divergence_handling_off_a_nan_trains_on_as_lightning_does(tmp_path: Path) -> None:
    run = _fit(tmp_path, "model.init_args.nan_at_step=25", "supervision.divergence.enabled=false")
    assert run.returncode == 0, run.stderr[-2000:]
    record = read_exit_record(tmp_path / "a1" / "exit.json")
    assert record is not None and record.status == "completed" and record.global_step == 3 * 23
