"""The trainer's side of elastic DDP, without a fit: the attempt's Trainer arguments, a batch's samples, and the
epoch position rescaled when a checkpoint of one world size resumes at another."""

from __future__ import annotations

from typing import Any

import torch

from trainer.callbacks.elastic import STATE_KEY, batch_samples, rescale_epoch_progress, with_world_size


def _checkpoint(saved_world_size: int | None, ready: int, epoch_batches: int | None = None) -> dict[str, Any]:
    # saved at a batch's end, as Lightning saves: that batch not yet counted completed
    counters = {"ready": ready, "started": ready, "processed": ready, "completed": ready - 1}
    ckpt: dict[str, Any] = {"loops": {"fit_loop": {"epoch_loop.batch_progress": {
        "total": {k: 100 + ready for k in counters}, "current": dict(counters), "is_last_batch": False}}}}
    if saved_world_size is not None:
        ckpt[STATE_KEY] = {"world_size": saved_world_size, "epoch_batches": epoch_batches}
    return ckpt


def _current(ckpt: dict[str, Any]) -> dict[str, int]:
    return ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]  # type: ignore[no-any-return]


def test_the_attempts_size_and_accumulation_replace_the_configured_ones() -> None:
    configured = {"devices": 2, "strategy": "ddp", "accumulate_grad_batches": 1}
    assert with_world_size(configured, 1, 2) == {"devices": 1, "strategy": "ddp", "accumulate_grad_batches": 2}
    assert with_world_size(configured, None, None) == configured and configured["devices"] == 2  # not mutated


def test_samples_of_a_batch() -> None:
    x, y = torch.zeros(32, 64), torch.zeros(32)
    assert batch_samples((x, y)) == batch_samples([x, y]) == batch_samples({"x": x}) == batch_samples(x) == 32
    assert batch_samples(object()) == 0


def test_a_shrink_doubles_the_batches_done_and_a_grow_halves_them_to_whole_steps() -> None:
    # 2 ranks had done 7 batches (7 steps) of the epoch: at 1 rank that share is 14 batches (7 steps of 2)
    shrink = _checkpoint(2, 7)
    assert rescale_epoch_progress(shrink, 1, 2) == 14
    assert _current(shrink) == {"ready": 14, "started": 14, "processed": 14, "completed": 13}
    assert shrink["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"] == 107  # totals untouched
    # 1 rank had done 14 batches: at 2 ranks, 7
    grow = _checkpoint(1, 14)
    assert rescale_epoch_progress(grow, 2, 1) == 7
    # 8 ranks, 5 batches done; at 4 ranks accumulating 2: 10 batches, 5 whole steps; at 3 of 6 x 1... rounded down
    assert rescale_epoch_progress(_checkpoint(8, 5), 4, 2) == 10
    assert rescale_epoch_progress(_checkpoint(4, 5), 8, 1) == 2
    assert rescale_epoch_progress(_checkpoint(1, 5), 2, 2) == 2  # whole steps of 2 only


def test_a_checkpoint_of_the_epochs_last_batch_stays_at_the_epochs_end() -> None:
    # 1 rank, 45 batches an epoch, saved at the 45th: at 2 ranks (23 an epoch) the epoch is over, not at 22
    assert rescale_epoch_progress(_checkpoint(1, 45, epoch_batches=45), 2, 1) == 23
    assert rescale_epoch_progress(_checkpoint(1, 44, epoch_batches=45), 2, 1) == 22
    assert rescale_epoch_progress(_checkpoint(2, 23, epoch_batches=23), 1, 2) == 46


def test_nothing_changes_at_the_same_size_or_without_a_record_of_the_size() -> None:
    for ckpt, size in ((_checkpoint(2, 7), 2), (_checkpoint(None, 7), 1), ({STATE_KEY: {"world_size": 2}}, 1)):
        before = repr(ckpt)
        assert rescale_epoch_progress(ckpt, size, 2) is None
        assert repr(ckpt) == before
