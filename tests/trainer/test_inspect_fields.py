"""How a batch's fields are named and shown (pure: tensors in, kinds and display values out)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.inspect.fields import classify, fields_of, named_fields, short_text, to_image

B = 4


@pytest.mark.parametrize(("name", "value", "position", "image_shape", "kind"), [
    ("input", torch.rand(B, 3, 16, 16), 0, None, "image"),          # (C, H, W) colour
    ("input", torch.rand(B, 1, 28, 28), 0, None, "image"),          # (C, H, W) grey
    ("input", torch.rand(B, 28, 28), 0, None, "image"),             # (H, W)
    ("input", torch.randint(0, 255, (B, 3, 8, 8), dtype=torch.uint8), 0, None, "image"),
    ("input", torch.rand(B, 64), 0, (1, 8, 8), "image"),            # flat, with the DataModule's image_shape
    ("input", torch.rand(B, 64), 0, None, "values"),                # flat, no image_shape: a vector
    ("input", torch.rand(B, 65), 0, (1, 8, 8), "values"),           # the wrong number of values
    ("input", torch.rand(B, 7, 16, 16), 0, None, "values"),         # 7 channels: not a picture
    ("target", torch.randint(0, 9, (B,)), 1, None, "label"),
    ("label", torch.randint(0, 9, (B,)), 0, None, "label"),         # named like a label, anywhere
    ("count", torch.randint(0, 9, (B,)), 0, None, "values"),        # an integer that is not a label
    ("target", torch.rand(B), 1, None, "values"),                   # a regression target
    ("tokens", torch.randint(0, 999, (B, 12)), 0, None, "values"),  # token ids are not pixels
    ("caption", ["a", "b", "c", "d"], 2, None, "text"),
])
def test_classify(name: str, value: object, position: int, image_shape: tuple[int, ...] | None, kind: str) -> None:
    assert classify(name, value, position, image_shape) == kind


def test_named_fields_of_each_batch_form() -> None:
    x, y = torch.zeros(B, 2), torch.zeros(B, dtype=torch.long)
    assert [n for n, _ in named_fields((x, y))] == ["input", "target"]
    assert [n for n, _ in named_fields([x])] == ["input"]
    assert [n for n, _ in named_fields((x, y, x))] == ["field0", "field1", "field2"]
    assert [n for n, _ in named_fields({"pixels": x, "label": y})] == ["pixels", "label"]
    assert [n for n, _ in named_fields(x)] == ["input"]


def test_fields_of_takes_n_items_across_batches() -> None:
    batches = [(torch.rand(3, 64), torch.tensor([1, 2, 3])), (torch.rand(3, 64), torch.tensor([4, 5, 6]))]
    image, label = fields_of(batches, 5, (1, 8, 8))
    assert label.items == [1, 2, 3, 4, 5] and label.batch_shape == [3] and label.dtype == "int64"
    assert len(image.items) == 5 and image.items[0].shape == (8, 8)


def test_to_image_scales_to_unit_range_and_puts_channels_last() -> None:
    colour = to_image(torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(3, 2, 4), None)
    assert colour.shape == (2, 4, 3) and colour.min() == 0.0 and colour.max() == 1.0
    flat = to_image(torch.full((64,), 5.0), (1, 8, 8))
    assert flat.shape == (8, 8) and np.all(flat == 0.0)  # a constant image stays black, not NaN


def test_short_text_cuts_long_vectors_and_says_their_length() -> None:
    assert short_text([0.5, 1.0]) == "[0.5, 1]"
    assert short_text(list(range(100))) == "[0, 1, 2, 3, 4, 5, …] (100)"
    assert len(short_text("x" * 200)) == 48
