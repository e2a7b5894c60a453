"""A small, complete example: an MLP classifying scikit-learn's bundled 8×8 digits.

Copy this file as a starting point for your own job. It shows the two classes a
job config names:

    model:
      class_path: trainer.examples.digits.DigitsClassifier
      init_args: {hidden_size: 128, dropout: 0.1, lr: 0.001}
    data:
      class_path: trainer.examples.digits.DigitsDataModule
      init_args: {batch_size: 64}

Nothing here knows about the supervisor: checkpoints, heartbeats and W&B are
added around these classes by ``python -m trainer``. The data ships with
scikit-learn (1,797 images), so there is nothing to download and a CPU trains it
in seconds.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

NUM_PIXELS = 8 * 8
NUM_CLASSES = 10
MAX_PIXEL_VALUE = 16.0  # the digits data stores grey levels 0..16


class DigitsClassifier(pl.LightningModule):
    """A two-layer perceptron: 64 pixels -> ``hidden_size`` -> 10 class logits.

    Logs ``train_loss`` every step and ``val_loss`` / ``val_acc`` per validation
    epoch; ``val_loss`` is what the example config monitors for "best".
    """

    def __init__(
        self,
        hidden_size: int = 128,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        # Stored in every checkpoint and sent to W&B as the run's hyperparameters.
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(NUM_PIXELS, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, NUM_CLASSES),
        )
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, images: Tensor) -> Tensor:
        """Class logits for a batch of images.

        images: (batch, 8, 8) or (batch, 64), grey levels scaled to [0, 1].
        Returns (batch, 10) logits.
        """
        flat = images.reshape(images.shape[0], NUM_PIXELS)  # (batch, 8, 8) -> (batch, 64)
        return self.net(flat)  # (batch, 64) -> (batch, 10)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One optimisation step's loss; ``batch`` is (images (B, 64), labels (B,))."""
        images, labels = batch
        loss = self.loss_fn(self(images), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Accumulate ``val_loss`` and ``val_acc`` (Lightning averages them over the epoch)."""
        images, labels = batch
        logits = self(images)  # (B, 10)
        loss = self.loss_fn(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()  # (B, 10) -> (B,) -> scalar
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_acc", accuracy, prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW with the learning rate and weight decay given at construction."""
        return torch.optim.AdamW(self.parameters(), lr=self.hparams["lr"],
                                 weight_decay=self.hparams["weight_decay"])


class DigitsDataModule(pl.LightningDataModule):
    """The 1,797 scikit-learn digits, split once into train and validation sets.

    The split is fixed by ``seed`` so every attempt of a job (and a resumed run)
    validates on the same images. Items are flattened 8×8 images; ``image_shape``
    says so, and ``ml-supervisor inspect data`` shows them as images.
    """

    image_shape = (1, 8, 8)  # (C, H, W) of one flattened item: 64 values

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str) -> None:
        """Load the images (bundled with scikit-learn: no download) and split them."""
        if self.train_set is not None:
            return
        digits = load_digits()
        images = torch.tensor(digits.data / MAX_PIXEL_VALUE, dtype=torch.float32)  # (1797, 64), in [0, 1]
        labels = torch.tensor(digits.target, dtype=torch.long)  # (1797,)
        order = torch.from_numpy(np.random.default_rng(self.seed).permutation(len(labels)))
        num_val = max(1, round(len(labels) * self.val_fraction))
        val_idx, train_idx = order[:num_val], order[num_val:]
        self.train_set = TensorDataset(images[train_idx], labels[train_idx])
        self.val_set = TensorDataset(images[val_idx], labels[val_idx])

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of (images (B, 64), labels (B,))."""
        assert self.train_set is not None, "setup() was not called"
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        assert self.val_set is not None, "setup() was not called"
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
