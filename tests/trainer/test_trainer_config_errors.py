"""Bad job configs give one line naming the file and the key, exit code 2, never a traceback.

The table runs ``--check`` in this process (one Lightning import for all rows);
two real processes check the same contract end to end, in ``--check`` and in
fit mode (which also writes ``exit.json``).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from trainer_testkit import DIGITS_CONFIG, REPO, trainer_env

from supervisor.jobfiles.exitrecord import read_exit_record
from supervisor.jobfiles.layout import EXIT_CONFIG_ERROR
from trainer.cli import check  # torch-free: Lightning loads on the first check

pytestmark = pytest.mark.lightning


def digits_config() -> dict[str, Any]:
    return yaml.safe_load(DIGITS_CONFIG.read_text())


def write_config(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def with_change(key: str, value: Any) -> dict[str, Any]:
    """The digits config with ``key`` (dotted) set to ``value``."""
    cfg = digits_config()
    node = cfg
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return cfg


def without(key: str, cfg: dict[str, Any]) -> dict[str, Any]:
    section, name = key.split(".")
    del cfg[section][name]
    return cfg


# (config, the expected line after "FILE: ")
BAD_CONFIGS = [
    pytest.param(with_change("model.class_path", "nosuchpkg_xyz.Model"),
                 "model.class_path: cannot import 'nosuchpkg_xyz.Model': No module named 'nosuchpkg_xyz'",
                 id="module-missing"),
    pytest.param(with_change("model.class_path", "trainer.examples.nosuch.Model"),
                 "model.class_path: cannot import 'trainer.examples.nosuch.Model': "
                 "No module named 'trainer.examples.nosuch'",
                 id="submodule-missing"),
    pytest.param(with_change("model.class_path", "trainer.examples.digits.Missing"),
                 "model.class_path: cannot import 'trainer.examples.digits.Missing': "
                 "module 'trainer.examples.digits' has no attribute 'Missing'",
                 id="class-missing"),
    pytest.param(with_change("model.class_path", "trainer.examples.digits.DigitsDataModule"),
                 "model.class_path: 'trainer.examples.digits.DigitsDataModule' is not a LightningModule",
                 id="not-a-module"),
    pytest.param(with_change("data.class_path", "trainer.examples.digits.DigitsClassifier"),
                 "data.class_path: 'trainer.examples.digits.DigitsClassifier' is not a LightningDataModule",
                 id="not-a-datamodule"),
    pytest.param(with_change("model.class_path", "trainer.examples.digits.NUM_PIXELS"),
                 "model.class_path: 'trainer.examples.digits.NUM_PIXELS' is not a class",
                 id="not-a-class"),
    pytest.param(with_change("callbacks.extra", [{"class_path": "trainer.examples.digits.DigitsClassifier"}]),
                 "callbacks.extra[0].class_path: 'trainer.examples.digits.DigitsClassifier' "
                 "is not a Lightning Callback",
                 id="not-a-callback"),
    pytest.param(with_change("model.init_args.hiden_size", 64),
                 "model.init_args.hiden_size: not an argument of DigitsClassifier",
                 id="unknown-init-arg"),
    pytest.param(with_change("trainer.max_epoch", 3),
                 "trainer.max_epoch: not an argument of Trainer",
                 id="unknown-trainer-arg"),
    pytest.param(with_change("trainer.logger", False),
                 "trainer.logger: set by the supervisor; configure logging under logger.wandb",
                 id="reserved-trainer-arg"),
    pytest.param(with_change("trainer.enable_checkpointing", False),
                 "trainer.enable_checkpointing: must stay true: the supervisor resumes from checkpoints "
                 "(set checkpoint.save_top_k: 0 to keep only last.ckpt)",
                 id="checkpointing-off"),
    pytest.param(with_change("trainer.strategy", "fsdp"),
                 "trainer.strategy: 'fsdp' is not supported: its sharded checkpoints are directories, which the "
                 "supervisor cannot save atomically or verify yet; use ddp",
                 id="sharded-strategy"),
    pytest.param(with_change("trainer.max_time", "soon"),
                 "trainer.max_time: expected DD:HH:MM:SS, a duration like 12h, or a mapping; got 'soon'",
                 id="bad-max-time"),
    # values against the type hints (jsonargparse, as LightningCLI): refused at submit, not in every attempt
    pytest.param(with_change("trainer.max_epochs", "ten"),
                 "trainer.max_epochs: expected int or None; got 'ten'",
                 id="trainer-value-of-wrong-type"),
    pytest.param(with_change("trainer.precision", "17"),
                 "trainer.precision: expected one of 64, 32, 16, 'transformer-engine', "
                 "'transformer-engine-float16', '16-true', '16-mixed', 'bf16-true', 'bf16-mixed', '32-true', "
                 "'64-true', '64', '32', '16', 'bf16' or None; got '17'",
                 id="trainer-value-not-a-choice"),
    pytest.param(with_change("model.init_args.hidden_size", "wide"),
                 "model.init_args.hidden_size: expected int; got 'wide'",
                 id="init-arg-of-wrong-type"),
    pytest.param(with_change("data.init_args.val_fraction", [0.2]),
                 "data.init_args.val_fraction: expected float; got '[0.2]'",
                 id="data-init-arg-of-wrong-type"),
    pytest.param(with_change("workdir", "/nonexistent/workdir"),
                 "workdir: no such directory: /nonexistent/workdir",
                 id="workdir-missing"),
    pytest.param(with_change("checkpoint.every_n_epoch", 1),
                 "checkpoint.every_n_epoch: unknown key",
                 id="loader-unknown-key"),
]


@pytest.fixture
def isolated_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--check`` puts the workdir on sys.path: undo it after each case."""
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.mark.parametrize(("cfg", "expected"), BAD_CONFIGS)
def test_check_rejects_bad_config_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_sys_path: None, cfg: dict[str, Any], expected: str,
) -> None:
    path = write_config(tmp_path, cfg)
    assert check(str(path), []) == EXIT_CONFIG_ERROR
    captured = capsys.readouterr()
    assert captured.err == f"{path}: {expected}\n"
    assert captured.out == ""


def test_check_reports_user_module_failing_at_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_sys_path: None,
) -> None:
    """A module in the job's workdir that raises on import: named with the error, no traceback."""
    module = f"brokenmod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("raise RuntimeError('boom at import')\n")
    cfg = with_change("model.class_path", f"{module}.Model")
    cfg["workdir"] = str(tmp_path)
    path = write_config(tmp_path, cfg)
    assert check(str(path), []) == EXIT_CONFIG_ERROR
    assert capsys.readouterr().err == (
        f"{path}: model.class_path: cannot import '{module}.Model': RuntimeError: boom at import\n")


def test_check_reports_missing_required_init_arg_of_workdir_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_sys_path: None,
) -> None:
    """Classes are imported from the job's workdir; a required argument the config omits is named."""
    module = f"needsarg_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "import pytorch_lightning as pl\n\n"
        "class NeedsWidth(pl.LightningModule):\n"
        "    def __init__(self, width: int) -> None:\n"
        "        super().__init__()\n"
    )
    cfg = with_change("model.class_path", f"{module}.NeedsWidth")
    cfg["model"]["init_args"] = {}
    cfg["workdir"] = str(tmp_path)
    path = write_config(tmp_path, cfg)
    assert check(str(path), []) == EXIT_CONFIG_ERROR
    assert capsys.readouterr().err == f"{path}: model.init_args: missing required argument 'width' of NeedsWidth\n"
    # The same class with the argument given passes.
    cfg["model"]["init_args"] = {"width": 3}
    path = write_config(tmp_path, cfg)
    assert check(str(path), []) == 0


def test_check_accepts_the_digits_example(capsys: pytest.CaptureFixture[str], isolated_sys_path: None) -> None:
    assert check(str(DIGITS_CONFIG), ["trainer.max_time=00:01:00:00", "trainer.max_epochs=2"]) == 0
    assert capsys.readouterr().err == ""


def test_check_and_fit_processes_print_one_line_and_exit_2(tmp_path: Path) -> None:
    """Real processes: the exact line on stderr, exit code 2, no traceback; fit mode writes exit.json."""
    path = write_config(tmp_path, with_change("model.class_path", "nosuchpkg_xyz.Model"))
    expected = f"{path}: model.class_path: cannot import 'nosuchpkg_xyz.Model': No module named 'nosuchpkg_xyz'"

    checked = subprocess.run([sys.executable, "-m", "trainer", "--check", "--config", str(path)],
                             cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=180)
    assert checked.returncode == EXIT_CONFIG_ERROR
    assert checked.stderr == expected + "\n"

    attempt_dir = tmp_path / "attempts" / "1"
    fit = subprocess.run([sys.executable, "-m", "trainer", "--config", str(path), "--attempt-dir", str(attempt_dir)],
                         cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=180)
    assert fit.returncode == EXIT_CONFIG_ERROR
    assert "Traceback" not in fit.stderr
    assert fit.stderr.strip().splitlines()[-1] == expected
    record = read_exit_record(attempt_dir / "exit.json")
    assert record is not None
    assert (record.status, record.message) == ("config_error", expected)



def test_a_trainer_that_cannot_be_built_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    """Values that pass the type check but that Trainer(...) refuses: exit 2 and a config_error record,
    so the daemon does not retry the attempt as a crash."""
    path = write_config(tmp_path, with_change("trainer.accelerator", "no-such-accelerator"))
    attempt_dir = tmp_path / "attempts" / "1"
    fit = subprocess.run([sys.executable, "-m", "trainer", "--config", str(path), "--attempt-dir", str(attempt_dir)],
                         cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=180)
    assert fit.returncode == EXIT_CONFIG_ERROR, fit.stderr[-2000:]
    assert "Traceback" not in fit.stderr
    record = read_exit_record(attempt_dir / "exit.json")
    assert record is not None and record.status == "config_error"
    assert record.message is not None
    assert record.message.startswith(f"{path}: trainer: Trainer(...) failed: ")
    assert "no-such-accelerator" in record.message and "\n" not in record.message


def test_filename_patterns_the_schema_allows_are_safe_in_lightnings_formatting() -> None:
    """Lightning formats checkpoint.filename with str.format over the metrics: the schema's check is what stands
    between a pattern and the trainer's objects. The refused pattern really walks into them; allowed ones do not."""
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    from supervisor.config.patterns import checkpoint_filename_problem

    def formatted(pattern: str) -> str:
        metrics = {"epoch": torch.tensor(3), "step": torch.tensor(120), "val_loss": torch.tensor(0.25)}
        return ModelCheckpoint()._format_checkpoint_name(pattern, metrics)

    attack = "{epoch].__repr__.__globals__[__name__}"
    assert formatted(attack) == "epoch].__repr__.__globals__[__name__=torch._tensor"  # reached a module's globals
    assert checkpoint_filename_problem(attack) is not None
    for pattern in ("{epoch}-{step}", "{epoch:02d}-{val_loss:.4f}", "{epoch.__class__.__init__.__globals__}",
                    "{step:>10}", "{val/acc:.3f}"):
        assert checkpoint_filename_problem(pattern) is None
        text = formatted(pattern)
        assert "globals" not in text.split("=")[-1] and len(text) < 120, text
def test_ranks_started_must_match_the_devices() -> None:
    """With externally started ranks, a devices count that disagrees is a config error naming the key."""
    from supervisor.errors import ConfigError
    from trainer.fit import check_world_size
    from trainer.ranks import RankInfo

    check_world_size({"devices": 2}, RankInfo(1, 1, 2), "job.yaml")  # agrees: nothing to say
    check_world_size({"devices": "auto"}, RankInfo(0, 0, 2), "job.yaml")  # Lightning checks that itself
    with pytest.raises(ConfigError) as caught:
        check_world_size({"devices": 1}, RankInfo(0, 0, 2), "job.yaml")
    assert caught.value.message == ("job.yaml: trainer.devices: 1 device(s) x 1 node(s) = 1 process(es), but the "
                                    "supervisor started 2 ranks (one per device)")
