"""The profiler report in the attempt directory, and ``callbacks.log_samples`` tables in W&B, on real fits.

One real fit of the digits example (2 epochs, simple profiler, log_samples on,
W&B offline) is shared by the first tests; the submit-time refusal runs
``--check`` in this process on a user's module outside the project.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from trainer_testkit import DIGITS_CONFIG, TrainerRun, run_trainer, trainer_env
from wandb_tables import logged_tables

from trainer.cli import check

pytestmark = pytest.mark.lightning
USERMODS = Path(__file__).resolve().parent / "inspect_user" / "usermods.py"
EPOCHS = 2


@pytest.fixture(scope="module")
def media_fit(tmp_path_factory: pytest.TempPathFactory) -> TrainerRun:
    root = tmp_path_factory.mktemp("media") / "job"
    env = trainer_env(WANDB_DATA_DIR=str(root.parent / "wandb-data"))
    run = run_trainer(root, [f"trainer.max_epochs={EPOCHS}", "trainer.profiler=simple", "logger.wandb.mode=offline",
                             "logger.wandb.run_id=mediafit1", "callbacks.log_samples=true",
                             "callbacks.log_samples_count=6"], env=env)
    assert run.proc.returncode == 0, run.output()
    return run


def test_simple_profiler_report_lands_in_the_attempt_dir(media_fit: TrainerRun) -> None:
    reports = list(media_fit.attempt_dir.glob("*profile*.txt"))
    assert [p.name for p in reports] == ["fit-profile.txt"]  # Lightning: <stage>-<filename>[-<rank> if DDP]
    text = reports[0].read_text()
    assert "Profiler Report" in text and "run_training_epoch" in text


def test_log_samples_logs_a_table_each_validation_epoch(media_fit: TrainerRun) -> None:
    (run_dir,) = media_fit.job.wandb_dir.glob("wandb/offline-run-*-mediafit1")
    tables = logged_tables(run_dir, "val_samples")
    assert len(tables) == EPOCHS  # one per validation epoch; the sanity check logs none
    steps = [t["_step"] for t in tables]
    assert steps == sorted(steps) and len(set(steps)) == EPOCHS
    for entry in tables:
        table = entry["table"]
        assert table["columns"] == ["input", "target", "prediction", "probability"]
        assert len(table["data"]) == 6
        for image, target, predicted, probability in table["data"]:
            assert image["_type"] == "image-file" and image["width"] == 8
            assert 0 <= target < 10 and 0 <= predicted < 10
            assert 0.1 <= probability <= 1.0  # the top softmax of 10 classes is at least 1/10


def write_user_config(tmp_path: Path, *, labels: bool, mode: str = "offline") -> Path:
    workdir = tmp_path / "userproject"
    workdir.mkdir(exist_ok=True)
    shutil.copy(USERMODS, workdir / "usermods.py")
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump({
        "name": "user-job", "workdir": str(workdir),
        "model": {"class_path": "usermods.TinyMLP"},
        "data": {"class_path": "usermods.DictData", "init_args": {"labels": labels}},
        "logger": {"wandb": {"mode": mode}},
        "callbacks": {"log_samples": True},
    }))
    return path


def test_log_samples_refused_at_submit_without_a_prediction(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    config = write_user_config(tmp_path, labels=False)
    assert check(str(config), []) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"{config}: callbacks.log_samples: TinyMLP is not a classifier (forward gives (8, 5), expected "
                   "(B, C) logits and integer targets) and defines no predict_step: define predict_step to say "
                   "what to show, or leave log_samples off")


def test_log_samples_accepted_for_a_classifier_and_refused_without_wandb(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check(str(write_user_config(tmp_path, labels=True)), []) == 0
    disabled = write_user_config(tmp_path, labels=True, mode="disabled")
    assert check(str(disabled), []) == 2
    assert capsys.readouterr().err.strip() == (f"{disabled}: callbacks.log_samples: needs W&B: "
                                               "logger.wandb.mode is disabled")


def test_digits_config_itself_passes_check_with_log_samples(capsys: pytest.CaptureFixture[str]) -> None:
    assert check(str(DIGITS_CONFIG), ["callbacks.log_samples=true"]) == 0
