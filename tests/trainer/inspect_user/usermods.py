"""A user's own module and DataModules, outside the project (the inspect tests import them via ``workdir``).

``TinyMLP`` takes ``features`` by keyword; ``DictData`` yields dict batches
{features (B, 10), caption [str] * B, label (B,)} or, with ``labels=False``,
{features, caption}; ``ShapeData`` yields (B, 3, 12, 12) images, with labels or alone.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

WIDTHS = (10, 20, 30, 5)  # in -> hidden -> hidden -> out


class TinyMLP(pl.LightningModule):
    """Three Linear layers, 10 -> 20 -> 30 -> 5, with a learning rate the finder can set."""

    def __init__(self, learning_rate: float = 1e-3) -> None:
        super().__init__()
        self.learning_rate = learning_rate
        self.body = nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 5))

    def forward(self, features: Tensor) -> Tensor:
        return self.body(features)  # (B, 10) -> (B, 5)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self(batch["features"])
        target = batch["label"] if "label" in batch else torch.zeros_like(out[:, 0], dtype=torch.long)
        return nn.functional.cross_entropy(out, target)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.learning_rate)


class NoLrMLP(TinyMLP):
    """The same network without a learning rate the finder could find."""

    def __init__(self) -> None:
        super().__init__()
        del self.learning_rate

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class KeywordOnly(TinyMLP):
    """forward takes a name no batch key matches."""

    def forward(self, pixels: Tensor) -> Tensor:  # type: ignore[override]
        return self.body(pixels)


class WithExample(KeywordOnly):
    """Says what forward takes: ``example_input_array`` wins over the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.example_input_array = torch.zeros(2, 10)  # (B, 10)


class _Items(Dataset):
    def __init__(self, size: int, labels: bool) -> None:
        generator = torch.Generator().manual_seed(0)
        self.features = torch.randn(size, 10, generator=generator)
        self.labels = torch.arange(size) % 3
        self.with_labels = labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, object]:
        item: dict[str, object] = {"features": self.features[i], "caption": f"item number {i}"}
        if self.with_labels:
            item["label"] = self.labels[i]
        return item


class DictData(pl.LightningDataModule):
    """Dict batches of 10 features and a caption, with or without an integer label."""

    def __init__(self, size: int = 90, batch_size: int = 8, labels: bool = True) -> None:
        super().__init__()
        self.size, self.batch_size, self.labels = size, batch_size, labels

    def setup(self, stage: str) -> None:
        self.train_set = _Items(self.size, self.labels)
        self.val_set = _Items(self.size // 3, self.labels)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class _Images(Dataset):
    def __init__(self, size: int, labels: bool) -> None:
        generator = torch.Generator().manual_seed(1)
        self.images = torch.rand(size, 3, 12, 12, generator=generator)  # (N, C, H, W) colour images
        self.labels = torch.arange(size) % 4
        self.with_labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        return (self.images[i], self.labels[i]) if self.with_labels else (self.images[i],)


class ShapeData(pl.LightningDataModule):
    """(B, 3, 12, 12) colour images, with labels (pairs) or without (1-tuples)."""

    def __init__(self, size: int = 40, batch_size: int = 8, labels: bool = True) -> None:
        super().__init__()
        self.size, self.batch_size, self.labels = size, batch_size, labels

    def setup(self, stage: str) -> None:
        self.train_set = _Images(self.size, self.labels)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size)
