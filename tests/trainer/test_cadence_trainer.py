"""checkpoint.every_n_train_steps: auto in the trainer: the daemon's interval is obeyed, and each save's stall is
recorded in the manifest (what the daemon's next choice weighs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.jobfiles.atomic import read_json_lines
from tests.support.harness import REPO

pytestmark = pytest.mark.lightning


def test_auto_takes_the_daemons_interval_and_records_each_saves_cost(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "trainer", "--config", str(REPO / "configs/digits.yaml"),
                          "--attempt-dir", str(tmp_path / "a1"), "--checkpoint-dir", str(tmp_path / "ckpt"),
                          "--checkpoint-every", "7", "logger.wandb.mode=disabled", "trainer.max_epochs=2",
                          "checkpoint.every_n_train_steps=auto"],
                         cwd=REPO, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    saves = [e for e in read_json_lines(tmp_path / "ckpt" / "manifest.jsonl") if e.get("event") == "save"]
    steps = {e["step"] for e in saves if e["kind"] == "last"}
    assert {7, 14, 21, 28, 35, 42} <= steps  # every 7 steps (46 in all), plus the epoch-end saves
    topk_steps = {e["step"] for e in saves if e["kind"] == "topk"}
    written = [e for e in saves if e["kind"] == "topk" or e["step"] not in topk_steps]
    linked = [e for e in saves if e["kind"] != "topk" and e["step"] in topk_steps]
    assert written and all(isinstance(e.get("save_s"), float) and 0 < e["save_s"] < 30 for e in written)
    # last.ckpt linked to the same step's top-k file is no save: no cost for the daemon's median to weigh
    assert linked and all(e.get("save_s") is None for e in linked)
