"""A user's autoencoder shaped like the Lightning docs' ``LitAutoEncoder``, on the bundled digits (issue 36).

Encoder 64 -> 64 -> 3, decoder 3 -> 64 -> 64, mean squared error, Adam at the
module's ``lr``. The digits DataModule yields (images, labels); the labels are
ignored, as the docs' module ignores MNIST's. ``val_loss`` is the reconstruction
error on the validation split.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

PIXELS = 8 * 8


class LitAutoEncoder(pl.LightningModule):
    """The docs' autoencoder (with 64 pixels in, not MNIST's 784) and a learning rate the finder can set."""

    def __init__(self, lr: float = 1e-3, hidden: int = 64, code: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Linear(PIXELS, hidden), nn.ReLU(), nn.Linear(hidden, code))
        self.decoder = nn.Sequential(nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, PIXELS))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x.reshape(x.shape[0], -1)))  # (B, 64) -> (B, 3) -> (B, 64)

    def _loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, _ = batch
        x = x.reshape(x.shape[0], -1)
        return nn.functional.mse_loss(self(x), x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])
