"""Split a batch into named fields and decide how each one is best shown (image, label, text, values).

Shared by ``inspect data`` and the ``log_samples`` callback, so a sample looks
the same in the terminal, in ``samples.png`` and in W&B.

A batch is a tuple/list (``(input, target)``, ``(input,)``, ``(a, b, c)``), a
dict, or one tensor. Per item, a field is shown as:

- ``image``: a (C, H, W) tensor with C in 1, 3, 4; an (H, W) tensor; or a flat
  vector when the DataModule declares ``image_shape`` with as many elements
  (the digits example declares ``image_shape = (1, 8, 8)``);
- ``label``: an integer per item, in a field named like a target (``target``,
  ``label``, ``y``, ...) or the second element of a pair;
- ``text``: a string; ``values``: anything else (a scalar, a vector, token ids).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

LABEL_NAMES = ("target", "targets", "label", "labels", "y", "class", "classes")
IMAGE_CHANNELS = (1, 3, 4)
MIN_IMAGE_SIDE = 2


@dataclass
class Field:
    """One field of the samples: its name, kind, per-item values, and its batch shape and dtype."""

    name: str
    kind: str  # "image", "label", "text" or "values"
    items: list[Any] = field(default_factory=list)  # image: (H, W) or (H, W, C) float array in [0, 1]
    batch_shape: list[int] | None = None
    dtype: str = ""


def named_fields(batch: Any) -> list[tuple[str, Any]]:
    """The batch as (name, value) pairs: dict keys, ``input``/``target`` for a pair, ``field<i>`` otherwise."""
    if isinstance(batch, Mapping):
        return [(str(k), v) for k, v in batch.items()]
    if isinstance(batch, (tuple, list)) and not _is_text(batch):
        if len(batch) == 1:
            return [("input", batch[0])]
        if len(batch) == 2:
            return [("input", batch[0]), ("target", batch[1])]
        return [(f"field{i}", v) for i, v in enumerate(batch)]
    return [("input", batch)]


def batch_length(value: Any) -> int:
    """Items in one field of a batch (0 when it has no batch dimension)."""
    if isinstance(value, Tensor):
        return int(value.shape[0]) if value.dim() > 0 else 0
    if isinstance(value, (list, tuple)):
        return len(value)
    if isinstance(value, np.ndarray):
        return int(value.shape[0]) if value.ndim > 0 else 0
    return 0


def classify(name: str, value: Any, position: int, image_shape: Sequence[int] | None) -> str:
    """The kind of a field, from its name, its per-item shape and dtype (see the module doc)."""
    if _is_text(value):
        return "text"
    if not isinstance(value, Tensor) or value.dim() == 0:
        return "values"
    item_shape = tuple(value.shape[1:])
    integer = not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
    if integer and item_shape == () and (name.lower() in LABEL_NAMES or position == 1):
        return "label"
    if integer and value.dtype != torch.uint8:
        return "values"  # token ids, indices: not pixels
    if len(item_shape) == 3 and item_shape[0] in IMAGE_CHANNELS and min(item_shape[1:]) >= MIN_IMAGE_SIDE:
        return "image"
    if len(item_shape) == 2 and min(item_shape) >= MIN_IMAGE_SIDE:
        return "image"
    if image_shape is not None and len(item_shape) == 1 and item_shape[0] == math.prod(image_shape):
        return "image"
    return "values"


def fields_of(batches: Sequence[Any], n: int, image_shape: Sequence[int] | None = None) -> list[Field]:
    """The first ``n`` items of ``batches`` as fields (kinds decided on the first batch)."""
    if not batches:
        return []
    first = named_fields(batches[0])
    out = [Field(name=name, kind=classify(name, value, i, image_shape), batch_shape=_shape(value),
                 dtype=_dtype(value)) for i, (name, value) in enumerate(first)]
    taken = 0
    for batch in batches:
        pairs = named_fields(batch)
        count = min(batch_length(pairs[0][1]) if pairs else 0, n - taken)
        for f, (_, value) in zip(out, pairs, strict=False):
            f.items.extend(item_value(f.kind, value, i, image_shape) for i in range(count))
        taken += count
        if taken >= n:
            break
    return out


def item_value(kind: str, value: Any, index: int, image_shape: Sequence[int] | None) -> Any:
    """Item ``index`` of a field, ready to show: an image array, an int label, a string, or plain values."""
    item = value[index] if batch_length(value) > index else value
    if kind == "image":
        return to_image(item, image_shape)
    if kind == "label":
        return int(item)
    if kind == "text":
        return str(item)
    if isinstance(item, Tensor):
        item = item.detach().cpu()
        return item.item() if item.dim() == 0 else item.tolist()
    return item


def to_image(item: Tensor, image_shape: Sequence[int] | None) -> np.ndarray:
    """One image as an (H, W) or (H, W, C) float array scaled to [0, 1] for display."""
    array = item.detach().cpu().float()
    if array.dim() == 1 and image_shape is not None:
        array = array.reshape(tuple(image_shape))  # (H*W*C,) -> image_shape, e.g. (1, 8, 8)
    if array.dim() == 3 and array.shape[0] in IMAGE_CHANNELS:
        array = array.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if array.dim() == 3 and array.shape[2] == 1:
        array = array[:, :, 0]  # (H, W, 1) -> (H, W): shown as grey levels
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) if high > low else torch.zeros_like(array)
    return scaled.numpy()


def label_field(fields: Sequence[Field]) -> Field | None:
    """The field holding class labels, if any."""
    return next((f for f in fields if f.kind == "label"), None)


def short_text(value: Any, limit: int = 48) -> str:
    """A value as at most ``limit`` characters: long vectors are cut with their length shown."""
    if isinstance(value, list) and len(value) > 6:
        head = ", ".join(_number(v) for v in value[:6])
        text = f"[{head}, …] ({len(value)})"
    elif isinstance(value, list):
        text = "[" + ", ".join(_number(v) for v in value) + "]"
    else:
        text = _number(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return short_text(value, 24)
    return str(value)


def _is_text(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value)


def _shape(value: Any) -> list[int] | None:
    if isinstance(value, Tensor):
        return list(value.shape)
    if isinstance(value, np.ndarray):
        return list(value.shape)
    if isinstance(value, (list, tuple)):
        return [len(value)]
    return None


def _dtype(value: Any) -> str:
    if isinstance(value, Tensor):
        return str(value.dtype).removeprefix("torch.")
    if isinstance(value, np.ndarray):
        return str(value.dtype)
    if _is_text(value):
        return "str"
    return type(value).__name__
