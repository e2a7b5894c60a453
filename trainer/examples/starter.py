"""Your model and data: a starting point that runs as it is (``ml-supervisor init`` wrote it as ``model.py``).

The job config (``job.yaml`` beside this file) names the two classes below by
``class_path`` and passes its ``init_args`` to their constructors; rename them,
replace their insides, and keep the config in step. Nothing here knows about the
supervisor: checkpoints, heartbeats, restarts and W&B are added around these
classes by ``python -m trainer``.

As written, a small MLP learns to tell apart a few clusters of random points that
are generated (seeded) in memory: nothing to download, a few seconds on a CPU.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset


class StarterModel(pl.LightningModule):
    """``num_features`` inputs -> ``hidden_size`` -> ``num_classes`` logits.

    Logs ``train_loss`` every step and ``val_loss`` / ``val_acc`` each validation;
    the config's ``checkpoint.monitor: val_loss`` makes the lowest ``val_loss`` the best
    checkpoint, the one a restart resumes from.
    """

    def __init__(self, num_features: int = 16, num_classes: int = 4, hidden_size: int = 64,
                 lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()  # kept in every checkpoint and sent to W&B as the run's config
        self.net = nn.Sequential(nn.Linear(num_features, hidden_size), nn.ReLU(), nn.Linear(hidden_size, num_classes))
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, x: Tensor) -> Tensor:
        """Class logits for a batch of points (B, num_features) -> (B, num_classes)."""
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", self.loss_fn(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


class StarterDataModule(pl.LightningDataModule):
    """``num_samples`` points around ``num_classes`` random centres, split into train and validation.

    Replace ``setup`` with your own data: build the datasets there (it runs in every
    process) and return loaders from ``train_dataloader`` / ``val_dataloader``.
    """

    def __init__(self, num_samples: int = 2048, num_features: int = 16, num_classes: int = 4,
                 batch_size: int = 64, val_fraction: float = 0.2, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        generator = torch.Generator().manual_seed(hp["seed"])  # the same points in every attempt
        centres = torch.randn(hp["num_classes"], hp["num_features"], generator=generator)
        labels = torch.randint(0, hp["num_classes"], (hp["num_samples"],), generator=generator)
        points = centres[labels] + torch.randn(hp["num_samples"], hp["num_features"], generator=generator)
        n_val = int(hp["num_samples"] * hp["val_fraction"])
        self.train_set = TensorDataset(points[n_val:], labels[n_val:])
        self.val_set = TensorDataset(points[:n_val], labels[:n_val])

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup() runs first"
        return DataLoader(self.train_set, batch_size=self.hparams["batch_size"], shuffle=True,
                          num_workers=self.hparams["num_workers"])

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup() runs first"
        return DataLoader(self.val_set, batch_size=self.hparams["batch_size"], num_workers=self.hparams["num_workers"])
