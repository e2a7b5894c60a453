"""Samples as a ``wandb.Table``: one row per item, images as ``wandb.Image`` (inspect data and log_samples)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trainer.inspect.fields import Field


def samples_table(fields: Sequence[Field], extra: Mapping[str, Sequence[Any]] | None = None) -> Any:
    """A ``wandb.Table`` with a column per field (and per ``extra`` column), a row per item."""
    import wandb  # only when W&B is on

    extra = extra or {}
    count = max((len(f.items) for f in fields), default=0)
    columns: list[str | int] = [f.name for f in fields]
    columns.extend(extra)
    rows = []
    for i in range(count):
        row: list[Any] = [_cell(f, i) for f in fields]
        row.extend(values[i] if i < len(values) else None for values in extra.values())
        rows.append(row)
    return wandb.Table(columns=columns, data=rows)


def _cell(f: Field, index: int) -> Any:
    import wandb

    if index >= len(f.items):
        return None
    value = f.items[index]
    if f.kind == "image":
        return wandb.Image((value * 255).round().astype("uint8"))
    if f.kind in ("label", "text"):
        return value
    return str(value) if isinstance(value, list) else value
