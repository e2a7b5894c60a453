"""One sweep of the real digits example under the real daemon: two grid trials, real Lightning fits,
W&B offline, the value read from the best checkpoint (checkpoint.monitor is the sweep's metric)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from supervisor.sweep.spec import load_sweep_file
from tests.support.harness import REPO, DaemonProc, real_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.lightning]


@pytest.fixture
def real_daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    state = tmp_path / "state"
    d = DaemonProc(state, REPO, real_env(state))
    d.start()
    yield d
    if d.proc is not None:
        d.kill()
    d.kill_leftovers()


def test_the_example_sweep_file_is_valid() -> None:
    spec = load_sweep_file(str(REPO / "configs" / "sweeps" / "digits.yaml"))
    # configs/ is a link to the package's bundled examples: the spec names the file it resolves to
    assert spec.method == "bayes" and spec.run_cap == 20
    assert spec.config == str((REPO / "configs" / "digits.yaml").resolve())


def test_a_grid_sweep_of_digits_runs_real_trials(real_daemon: DaemonProc, tmp_path: Path) -> None:
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "config": str(REPO / "configs" / "digits.yaml"), "name": "digits-grid", "method": "grid",
        "metric": {"name": "val_loss", "goal": "minimize"}, "parallel": 2,
        "parameters": {"model.init_args.lr": {"values": [0.00001, 0.01]}, "trainer.max_epochs": {"value": 2}},
    }))
    # no standby: these trials never crash, and its imports would only compete with theirs for the CPU
    out = real_daemon.ctl("sweep", "create", str(sweep_file), "checkpoint.every_n_train_steps=10",
                          "supervision.budget=null", "supervision.standby=off").stdout
    sweep = out.strip().splitlines()[-1]
    final: dict = {}

    def done() -> bool:
        final.update(real_daemon.client().call("sweep_status", sweep=sweep))
        return final["state"] != "running"

    wait_for(done, timeout=400, interval=1.0, what="the digits sweep")
    assert final["state"] == "completed", json.dumps(final, indent=1)
    trials = {t["params"]["model.init_args.lr"]: t for t in final["trials"]}
    assert set(trials) == {0.00001, 0.01} and all(t["state"] == "completed" for t in trials.values())
    for t in trials.values():
        job = real_daemon.status(t["job_id"])
        assert t["value"] == pytest.approx(job["best_checkpoint"]["score"])  # monitor == metric: the best score
        assert job["wandb"]["mode"] == "offline"
        cfg = yaml.safe_load(Path(job["job_dir"], "config.yaml").read_text())
        assert cfg["logger"]["wandb"]["group"] == sweep and cfg["trainer"]["max_epochs"] == 2
    # a learning rate of 1e-5 barely moves in two epochs: the 0.01 trial is the best
    assert final["best"]["params"]["model.init_args.lr"] == 0.01
    assert trials[0.01]["value"] < trials[0.00001]["value"]
