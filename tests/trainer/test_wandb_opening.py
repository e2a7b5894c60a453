"""``OpeningWandbLogger`` with real W&B (offline): what is logged before the run is open reaches it, in order.

The run's opening is held back by a gate (a test subclass), so "before it is
open" is certain, not a race; the run file is then read back.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from wandb_tables import finished_records

pytestmark = pytest.mark.lightning

RUN_ID = "opening01"


def _gated(inner: Any, gate: threading.Event) -> Any:
    from trainer.wandb_opening import OpeningWandbLogger

    class Gated(OpeningWandbLogger):
        def _open_run(self) -> None:
            gate.wait(60)
            super()._open_run()

    return Gated(inner)


def _history(run_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for record in finished_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            rows.append({"/".join(list(item.nested_key) or [item.key]): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_what_is_logged_before_the_run_opens_reaches_it_in_order(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    gate = threading.Event()
    logger = _gated(WandbLogger(id=RUN_ID, project="p", save_dir=str(tmp_path), mode="offline"), gate)
    try:
        assert logger.version == RUN_ID and logger.name == "p"  # known without the run
        assert isinstance(logger, WandbLogger)  # for user code that checks before using W&B-only calls
        logger.log_hyperparams({"lr": 0.5})
        for step in range(3):
            logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        stand_in = logger.experiment  # what Lightning's setup hook touches: must not wait
        assert wandb.run is None and not list(tmp_path.rglob("run-*.wandb"))  # nothing opened yet
        gate.set()
        logger.log_metrics({"loss": 0.1}, step=3)  # may come before or after the open: both are fine
        assert stand_in.id == RUN_ID  # the stand-in waits for the run on first use
        logger.finalize("success")
    finally:
        gate.set()
        wandb.finish()
    (run_dir,) = tmp_path.glob(f"wandb/offline-run-*-{RUN_ID}")
    rows = [r for r in _history(run_dir) if "loss" in r]
    assert [(r["trainer/global_step"], r["loss"]) for r in rows] == [(0, 1.0), (1, 0.5), (2, 1 / 3), (3, 0.1)]
    config = [item for r in finished_records(run_dir) if r.WhichOneof("record_type") == "config"
              for item in r.config.update if item.key == "lr"]
    assert config and "0.5" in config[-1].value_json


def test_a_run_that_fails_to_open_fails_on_the_main_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    gate = threading.Event()
    logger = _gated(WandbLogger(id=RUN_ID, project="p", save_dir=str(tmp_path), mode="no-such-mode"), gate)
    logger.log_metrics({"loss": 1.0}, step=0)  # kept: the run is not open yet
    gate.set()
    with pytest.raises(Exception, match="no-such-mode"):  # where a cold start fails: at a W&B call of the fit
        logger.settle()
    logger.settle_quietly()  # on the way out of a failing fit: reported, never raised over the fit's own error
