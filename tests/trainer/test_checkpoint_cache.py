"""The standby's in-memory checkpoint (``trainer.checkpoint_cache``) on a real fit's checkpoints.

One real ``python -m trainer`` fit leaves checkpoints and a manifest; then, in
this process, a Lightning resume served from the cache must end in exactly the
state a cold resume from the disk does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from trainer_testkit import run_trainer

pytestmark = pytest.mark.lightning

EVERY = 10


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache") / "job"
    run = run_trainer(root, ["trainer.max_epochs=1", f"checkpoint.every_n_train_steps={EVERY}",
                             "logger.wandb.mode=disabled"])
    assert run.proc.returncode == 0, run.output()
    return run.job.checkpoints


def _cache(checkpoint_dir: Path, limit_bytes: int = 2**30) -> Any:
    from trainer.checkpoint_cache import CheckpointCache

    cache = CheckpointCache(checkpoint_dir, "last", limit_bytes)
    cache.refresh()
    return cache


def _newest(checkpoint_dir: Path) -> str:
    from supervisor.jobfiles.layout import manifest_path
    from supervisor.jobfiles.manifest import live_checkpoints
    from supervisor.rules.resume import choose_resume

    path = choose_resume(live_checkpoints(manifest_path(checkpoint_dir)), "last").path
    assert path is not None
    return os.path.realpath(path)


def _resume(checkpoint: str, plugin: Any | None) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Resume digits from ``checkpoint`` for 3 more steps; (global step, weights, optimizer state)."""
    import pytorch_lightning as pl

    from trainer.examples.digits import DigitsClassifier, DigitsDataModule

    pl.seed_everything(0, verbose=False)
    model = DigitsClassifier()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=26, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         plugins=[plugin] if plugin is not None else None)
    trainer.fit(model, datamodule=DigitsDataModule(num_workers=0), ckpt_path=checkpoint)
    optimizer = trainer.optimizers[0].state_dict()
    return trainer.global_step, model.state_dict(), optimizer


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_a_resume_served_from_memory_ends_where_a_cold_resume_does(checkpoints: Path) -> None:
    from trainer.checkpoint_cache import CachedCheckpointIO

    newest = _newest(checkpoints)
    cache = _cache(checkpoints)
    assert cache.holds == newest
    warm = _resume(newest, CachedCheckpointIO(cache))
    assert cache.served == newest and cache.holds is None  # served once, then forgotten
    cold = _resume(newest, None)
    assert warm[0] == cold[0] == 26
    assert _same(warm[1], cold[1]) and _same(warm[2], cold[2])


def test_the_copy_is_handed_over_once_and_a_later_load_reads_the_disk(checkpoints: Path) -> None:
    import torch

    from trainer.checkpoint_cache import CachedCheckpointIO

    newest = _newest(checkpoints)
    io = CachedCheckpointIO(_cache(checkpoints))
    first = io.load_checkpoint(newest)
    weights = next(iter(first["state_dict"].values()))
    with torch.no_grad():
        weights.add_(1.0)  # what training does to the tensors it was given
    second = io.load_checkpoint(newest)  # from the disk: the training's changes are not in it
    assert not _same(first["state_dict"], second["state_dict"])
    assert _same(second, io.load_checkpoint(newest))


def test_a_file_changed_on_disk_or_over_the_limit_is_not_served(checkpoints: Path) -> None:
    newest = _newest(checkpoints)
    assert _cache(checkpoints, limit_bytes=1000).holds is None  # a digits checkpoint is ~100 KB
    cache = _cache(checkpoints)
    assert cache.holds == newest
    st = os.stat(newest)
    os.utime(newest, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # rewritten since it was loaded
    assert cache.take(newest) is None
