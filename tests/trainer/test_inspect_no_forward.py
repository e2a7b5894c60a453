"""``inspect model`` on a module without ``forward``: Lightning's own ``LitAutoEncoder`` (its intro writes it with
``training_step`` only). Parameters always; the FLOPs and shapes of one ``training_step`` on a real batch, under
``no_grad``, equal to the hand count of its Linear layers; the output says that ``training_step`` was measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from trainer_testkit import trainer_env

from supervisor.errors import ConfigError
from trainer.inspect import inspect_model

pytestmark = pytest.mark.lightning

# As in Lightning's introduction (lightning.ai/docs/pytorch/stable/starter/introduction.html), plus random "images"
# in place of MNIST (no download).
USER_MODULE = '''
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class LitAutoEncoder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 3))
        self.decoder = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 28 * 28))

    def training_step(self, batch, batch_idx):
        x, _ = batch
        x = x.view(x.size(0), -1)
        z = self.encoder(x)
        x_hat = self.decoder(z)
        loss = nn.functional.mse_loss(x_hat, x)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class RandomImages(pl.LightningDataModule):
    def __init__(self, batch_size: int = 8):
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        images = torch.rand(64, 1, 28, 28, generator=g)
        return DataLoader(TensorDataset(images, torch.zeros(64, dtype=torch.long)), batch_size=self.batch_size)
'''

LINEARS = ((28 * 28, 64), (64, 3), (3, 64), (64, 28 * 28))


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "lit_intro.py").write_text(USER_MODULE)
    path = tmp_path / "autoencoder.yaml"
    path.write_text(yaml.safe_dump({
        "name": "autoencoder", "workdir": str(workdir),
        "model": {"class_path": "lit_intro.LitAutoEncoder"},
        "data": {"class_path": "lit_intro.RandomImages", "init_args": {"batch_size": 8}},
        "trainer": {"accelerator": "cpu", "max_epochs": 1},
        "logger": {"wandb": {"mode": "disabled"}},
    }))
    return path


def test_parameters_and_flops_of_training_step_match_the_hand_count(config: Path) -> None:
    report = inspect_model(str(config), cpu=True)
    assert report.measured == "training_step"
    assert report.total_params == report.trainable_params == sum(i * o + o for i, o in LINEARS) == 101_651
    # 2·B·in·out per Linear for a batch of 8; ReLU, the bias adds and the MSE loss are not counted
    assert report.flops == 2 * 8 * sum(i * o for i, o in LINEARS) == 1_611_776
    assert report.batch_size == 8
    assert report.input_source == "batch (training_step)"
    assert report.input_shape == [[8, 1, 28, 28], [8]]
    assert report.output_shape == []  # training_step returned the loss, a scalar
    rows = {row.name: row for row in report.layers}
    assert rows["encoder.0"].params == 28 * 28 * 64 + 64 and rows["encoder.0"].output_shape == [8, 64]
    assert rows["encoder.2"].output_shape == [8, 3] and rows["decoder.2"].output_shape == [8, 28 * 28]
    assert rows["encoder"].flops == 2 * 8 * (28 * 28 * 64 + 64 * 3)
    assert rows["decoder.2"].flops == 2 * 8 * 64 * 28 * 28


def test_onnx_export_of_a_module_without_forward_is_one_line(config: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        inspect_model(str(config), cpu=True, onnx=tmp_path / "model.onnx")
    assert "LitAutoEncoder has no forward" in caught.value.message and "\n" not in caught.value.message


def test_the_command_says_training_step_was_measured(config: Path) -> None:
    env = trainer_env()
    done = subprocess.run([sys.executable, "-m", "trainer", "inspect", "model", str(config), "--cpu", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["measured"] == "training_step" and report["flops"] == 1_611_776
    text = subprocess.run([sys.executable, "-m", "trainer", "inspect", "model", str(config), "--cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert text.returncode == 0, text.stderr
    assert "one training_step (the module has no forward)" in text.stdout
    assert "101,651" in text.stdout
