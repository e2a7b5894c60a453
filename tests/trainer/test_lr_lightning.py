"""``tune lr`` with real Lightning: the suggestion trains, ``--verify`` picks a rate that trains, runs repeat.

Two jobs, each read once by a module fixture: the digits example (through the
command line, ``--json --verify 1``) and an autoencoder like the Lightning docs'
``LitAutoEncoder`` on the same digits (``inspect_user/autoencoder.py``, through
``find_lr`` with ``verify=2``), where Lightning's own rule suggests a rate that
does not learn (issue 36). ``--verify`` runs 69 steps a rate: three epochs of
the digits' 23 batches. Short fits on the CPU, a few seconds each.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml
from trainer_testkit import DIGITS_CONFIG

from trainer.inspect.lr import LrReport, find_lr, verify_rates
from trainer.inspect.lr_rules import BETA, debias, lightning_rule

pytestmark = pytest.mark.lightning
AUTOENCODER = Path(__file__).resolve().parent / "inspect_user" / "autoencoder.py"
THREE_EPOCHS = 3 * 23  # steps: the digits' 1438 training images in batches of 64


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def run_value(report: LrReport, label: str) -> float:
    """The validation metric after ``--verify``'s short fit at the rate ``label`` (a rule or "config") named."""
    assert report.verify is not None
    run = next(r for r in report.verify.runs if label in r.labels)
    assert run.value is not None
    return run.value


@pytest.fixture(scope="module")
def ae_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's job: the autoencoder, Adam at lr 0.002, seeded."""
    folder = tmp_path_factory.mktemp("autoencoder")
    shutil.copy(AUTOENCODER, folder / "autoencoder.py")
    config = folder / "job.yaml"
    config.write_text(yaml.safe_dump({
        "name": "autoencoder", "seed": 0, "workdir": str(folder),
        "model": {"class_path": "autoencoder.LitAutoEncoder", "init_args": {"lr": 0.002}},
        "data": {"class_path": "trainer.examples.digits.DigitsDataModule", "init_args": {"batch_size": 64}},
        "trainer": {"accelerator": "cpu", "max_epochs": 3, "enable_progress_bar": False},
        "checkpoint": {"monitor": "val_loss", "mode": "min"},
        "logger": {"wandb": {"mode": "disabled"}},
    }))
    return config


@pytest.fixture(scope="module")
def ae_report(ae_config: Path, tmp_path_factory: pytest.TempPathFactory) -> LrReport:
    return find_lr(str(ae_config), cpu=True, out=tmp_path_factory.mktemp("ae-out"), verify=2,
                   verify_steps=THREE_EPOCHS)


@pytest.fixture(scope="module")
def digits_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``python -m trainer tune lr configs/digits.yaml --cpu --json --verify 1`` (in this process)."""
    from trainer.inspect.cli import main

    out = tmp_path_factory.mktemp("digits-out")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["tune", "lr", str(DIGITS_CONFIG), "--cpu", "--json", "--out", str(out), "--verify", "1",
                     "--verify-steps", str(THREE_EPOCHS)])
    assert code == 0
    return dict(json.loads(stdout.getvalue()))  # stdout holds exactly the one object


def test_autoencoder_default_trains_and_lightnings_rule_is_flagged(ae_report: LrReport) -> None:
    report = ae_report
    assert report.suggested_lr is not None and report.default_rule is not None, report.reason
    assert report.config_lr == 0.002 and report.seed == 0
    # the default trains about as well as the config's rate, or better (3 epochs, the same start)
    default, config = run_value(report, report.default_rule), run_value(report, "config")
    assert default <= 1.5 * config, (report.suggested_lr, default, config)
    # Lightning's rule lands where the loss is still flat, and is said to
    lightning = next(s for s in report.suggestions if s["rule"] == "lightning")
    assert lightning["lr"] < 1e-4 and lightning["before_descent"]
    assert any(w.startswith("lightning (") for w in report.warnings)
    assert report.descent is not None and report.descent["from_lr"] < report.suggested_lr < report.descent["to_lr"]
    assert png_size(Path(report.plot)) == (960, 560)


def test_autoencoder_verify_picks_a_rate_that_beats_one_100_times_smaller(ae_config: Path,
                                                                           ae_report: LrReport) -> None:
    assert ae_report.verify is not None
    winner = ae_report.verify.winner
    assert winner is not None and winner.value is not None
    assert ae_report.override == f"model.init_args.lr={winner.lr:.3g}"
    assert [r.value for r in ae_report.verify.runs if r is not winner] >= [winner.value] * 2  # the lowest
    smaller = verify_rates(str(ae_config), (), [(winner.lr / 100, ["winner / 100"])], cpu=True,
                           steps=THREE_EPOCHS)
    assert smaller.runs[0].value is not None and winner.value < smaller.runs[0].value


def test_autoencoder_the_same_config_gives_the_same_curve(ae_config: Path, ae_report: LrReport,
                                                          tmp_path: Path) -> None:
    again = find_lr(str(ae_config), cpu=True, out=tmp_path)
    assert again.suggestions == ae_report.suggestions
    assert again.suggested_lr == ae_report.suggested_lr and again.verify is None


def test_autoencoder_text_output_names_the_winner(ae_report: LrReport) -> None:
    from rich.console import Console

    from trainer.inspect import show

    console = Console(file=io.StringIO(), width=120)
    show.print_lr(console, ae_report)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert ae_report.verify is not None and ae_report.verify.winner is not None
    assert f"use it with: model.init_args.lr={ae_report.verify.winner.lr:.3g}" in text
    assert "--verify: 69 steps at each rate" in text and "best" in text
    assert "* " in text and ae_report.default_rule in text


def test_digits_default_trains_and_the_json_has_every_rule(digits_json: dict[str, Any]) -> None:
    report = digits_json
    rules = [s["rule"] for s in report["suggestions"]]
    assert rules == ["valley", "steepest_descent", "minimum_div_10", "lightning"]
    assert report["suggested_lr"] is not None and [s["default"] for s in report["suggestions"]].count(True) == 1
    verify = report["verify"]
    assert verify["monitor"] == "val_loss" and verify["mode"] == "min" and verify["steps"] == THREE_EPOCHS
    values = {label: run["value"] for run in verify["runs"] for label in run["labels"]}
    assert values[report["default_rule"]] <= 1.5 * values["config"], verify
    winner = next(run for run in verify["runs"] if run["winner"])
    assert report["override"] == f"model.init_args.lr={winner['lr']:.3g}"
    assert png_size(Path(report["plot"])) == (960, 560)


def test_the_rules_read_lightnings_curve_as_lightning_records_it() -> None:
    """Pins what lr_rules assumes of Lightning: its moving average (beta, the correction one step ahead) and
    its rule (LRFinder.suggestion), with a module whose loss is the same at every step."""
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.tuner import Tuner
    from pytorch_lightning.tuner.lr_finder import _LRFinder
    from torch.utils.data import DataLoader, TensorDataset

    class Constant(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lr = 0.1
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.weight.sum() * 0 + 3.0  # the same loss whatever the rate

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    data = DataLoader(TensorDataset(torch.zeros(8, 1)), batch_size=1)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, max_epochs=-1)
    finder = Tuner(trainer).lr_find(Constant(), train_dataloaders=data, num_training=20, update_attr=False)
    assert finder is not None
    recorded = finder.results["loss"]
    assert recorded[0] == pytest.approx(3.0 * (1 - BETA) / (1 - BETA ** 2))  # about half: the rising start
    assert debias(recorded) == pytest.approx([3.0] * 20)

    rng = random.Random(1)
    lrs = [1e-8 * 1e8 ** (i / 99) for i in range(100)]
    losses = [2 + math.tanh(-(math.log10(lr) + 3)) + 0.01 * rng.gauss(0, 1) for lr in lrs]
    lightning = _LRFinder("exponential", 1e-8, 1.0, 100)
    lightning.results = {"lr": lrs, "loss": losses}
    index = lightning_rule(lrs, losses)
    assert index is not None and lightning.suggestion() == lrs[index]
