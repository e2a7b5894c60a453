"""Sweeps for real: a real daemon, a real sweep worker process with a real Optuna study (SQLite),
every trial a real supervised job of the fake trainer (whose val_loss is a known function of x and y)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import optuna
import psutil
import pytest
import yaml

from supervisor.alerts import read_alerts
from tests.alerts.wandb_offline_log import read_alerts as read_wandb_alerts
from tests.alerts.wandb_offline_log import read_run_record
from tests.support.fake_trainer import objective
from tests.support.harness import DaemonProc, wait_for, write_config
from tests.support.resume_oracle import best_not_newest

pytestmark = pytest.mark.e2e


def _sweep_file(d: DaemonProc, name: str, parameters: dict[str, Any], **keys: Any) -> Path:
    base = write_config(d.workdir, f"{name}-base", steps=20, step_time=0.02, ckpt_every=5, val_every=5)
    data = {"config": base.name, "name": name, "method": "grid", "metric": {"name": "val_loss", "goal": "minimize"},
            "parameters": parameters, **keys}
    path = d.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _create(d: DaemonProc, path: Path, *overrides: str) -> str:
    return d.ctl("sweep", "create", str(path), *overrides).stdout.strip().splitlines()[-1]


def _status(d: DaemonProc, sweep: str) -> dict[str, Any]:
    return json.loads(d.ctl("sweep", "status", sweep, "--json").stdout)


def _wait_done(d: DaemonProc, sweep: str, timeout: float = 120.0) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(d.client().call("sweep_status", sweep=sweep))
        return found["state"] != "running"

    try:
        wait_for(done, timeout=timeout, interval=0.3, what=f"sweep {sweep} to end")
    except AssertionError:
        log = (d.state_dir / "sweeps" / sweep / "worker.log")
        raise AssertionError(f"sweep {sweep} still {found.get('state')}: {found.get('trials')}\n"
                             f"{log.read_text()[-3000:] if log.exists() else ''}") from None
    return found


def test_grid_2x2_runs_exactly_4_trials_and_best_is_the_lowest(daemon: DaemonProc) -> None:
    path = _sweep_file(daemon, "grid", {"model.init_args.x": {"values": [0.0, 0.3]},
                                        "model.init_args.y": {"values": [0.7, 1.0]},
                                        "model.init_args.steps": {"value": 20}}, parallel=2, seed=1)
    sweep = _create(daemon, path, "supervision.max_restarts=2")
    final = _wait_done(daemon, sweep)
    assert final["state"] == "completed" and final["method"] == "grid"
    assert final["metric"] == {"name": "val_loss", "goal": "minimize"}
    trials = final["trials"]
    assert len(trials) == 4 and [t["n"] for t in trials] == [1, 2, 3, 4]
    points = {(t["params"]["model.init_args.x"], t["params"]["model.init_args.y"]) for t in trials}
    assert points == {(0.0, 0.7), (0.0, 1.0), (0.3, 0.7), (0.3, 1.0)}
    assert all(t["state"] == "completed" for t in trials)
    for t in trials:  # the value is the best val_loss the job logged: objective + 1/k at its 4th validation
        expected = objective(t["params"]["model.init_args.x"], t["params"]["model.init_args.y"]) + 0.25
        assert t["value"] == pytest.approx(expected)
    lowest = min(trials, key=lambda t: t["value"])
    assert final["best"]["job_id"] == lowest["job_id"] and final["best"]["value"] == lowest["value"]
    assert final["best"]["params"] == {"model.init_args.x": 0.3, "model.init_args.y": 0.7, "model.init_args.steps": 20}
    # every trial is a normal job named <sweep>-<n>, in the sweep's W&B group, with the sweep's overrides
    jobs = {j["id"]: j for j in daemon.client().call("list")}
    for t in trials:
        job = jobs[t["job_id"]]
        assert job["name"] == f"{sweep}-{t['n']}"
        cfg = yaml.safe_load(Path(job["job_dir"], "config.yaml").read_text())
        assert cfg["logger"]["wandb"]["group"] == sweep
        assert cfg["supervision"]["max_restarts"] == 2
        assert cfg["model"]["init_args"]["x"] == t["params"]["model.init_args.x"]
    assert len(jobs) == 4
    listed = json.loads(daemon.ctl("sweep", "list", "--json").stdout)
    assert [s["id"] for s in listed] == [sweep]
    table = daemon.ctl("sweep", "status", sweep).stdout
    assert "best: trial" in table and final["best"]["job_id"] in table
    finished = wait_for(lambda: read_alerts(daemon.state_dir, job_id=sweep), what="the sweep's alert")
    assert [a["event"] for a in finished] == ["sweep_finished"]
    text = finished[0]["text"]
    assert f"val_loss = {final['best']['value']}" in text and "model.init_args.x=0.3" in text


def test_a_sweep_whose_trials_never_log_the_metric_fails_and_alerts_into_wandb(daemon: DaemonProc) -> None:
    path = _sweep_file(daemon, "nometric", {"model.init_args.x": {"values": [0.1]}})
    data = yaml.safe_load(path.read_text())
    data["metric"] = {"name": "val_acc", "goal": "maximize"}
    path.write_text(yaml.safe_dump(data))
    sweep = _create(daemon, path, "logger.wandb.mode=offline", "logger.wandb.project=sweep-alerts")
    final = _wait_done(daemon, sweep)
    assert final["state"] == "failed" and final["best"] is None
    [trial] = final["trials"]
    assert trial["state"] == "completed" and trial["value"] is None  # the job completed; the trial failed
    assert trial["outcome"] == "fail" and trial["detail"] == "the trial never logged val_acc"
    delivered = wait_for(lambda: [a for a in read_alerts(daemon.state_dir, job_id=sweep)
                                  if a["status"] not in ("pending",)], timeout=90, interval=0.5,
                         what="the sweep_failed alert delivered")
    assert delivered[0]["event"] == "sweep_failed" and delivered[0]["level"] == "ERROR"
    # into W&B (offline), as the run <sweep>-supervisor in the sweep's group, beside its trials' runs
    wandb_dir = daemon.state_dir / "sweeps" / sweep / "wandb"
    files = sorted(wandb_dir.glob(f"wandb/offline-run-*-{sweep}-supervisor/*.wandb"))
    assert files, "no offline W&B run for the sweep's alerts"
    assert read_run_record(files[0]).run_group == sweep
    assert [a["title"] for a in read_wandb_alerts(files[0])] == ["nometric: sweep failed"]


def test_random_with_a_seed_is_reproducible(daemon: DaemonProc) -> None:
    params = {"model.init_args.x": {"min": 0.0, "max": 1.0}, "model.init_args.y": {"min": 0.0, "max": 1.0}}
    runs = []
    for name, seed in (("rand-a", 7), ("rand-b", 7), ("rand-c", 8)):
        path = _sweep_file(daemon, name, params, method="random", run_cap=3, parallel=3, seed=seed)
        runs.append(_create(daemon, path))
    finals = [_wait_done(daemon, sweep) for sweep in runs]
    drawn = [[t["params"] for t in f["trials"]] for f in finals]
    assert all(f["state"] == "completed" and len(f["trials"]) == 3 for f in finals)
    assert drawn[0] == drawn[1]  # same seed, same points, in the same order
    assert drawn[0] != drawn[2]  # and the seed matters


def test_a_crashing_trial_restarts_from_best_like_any_job(daemon: DaemonProc) -> None:
    path = _sweep_file(daemon, "crashy", {"model.init_args.x": {"values": [0.1, 0.3]}}, parallel=2)
    sweep = _create(daemon, path, "model.init_args.crash_at=12")
    final = _wait_done(daemon, sweep)
    assert final["state"] == "completed" and len(final["trials"]) == 2
    for t in final["trials"]:
        job = daemon.status(t["job_id"])
        assert job["restarts"] == 1 and job["attempts"][0]["reason"] == "crash"
        # the best when attempt 1 crashed (step 5: step 10 scores worse), not the newest (last.ckpt)
        assert job["attempts"][1]["resumed_from"] == best_not_newest(job["job_dir"], 2)
        # the value spans both attempts' timeline: the 4th validation (step 20) was in attempt 2
        assert t["value"] == pytest.approx(objective(t["params"]["model.init_args.x"], 0.0) + 0.25)


def test_daemon_and_worker_sigkilled_mid_sweep_finish_with_exactly_run_cap_trials(daemon: DaemonProc) -> None:
    params = {"model.init_args.x": {"min": 0.0, "max": 1.0}}
    path = _sweep_file(daemon, "killed", params, method="random", run_cap=8, parallel=2, seed=3)
    sweep = _create(daemon, path, "model.init_args.steps=40", "model.init_args.step_time=0.05")
    sweep_dir = daemon.state_dir / "sweeps" / sweep
    wait_for(lambda: len(_status(daemon, sweep)["trials"]) >= 3, timeout=60, what="3 trials started")
    worker_pid = int((sweep_dir / "worker.pid").read_text())
    daemon.kill(signal.SIGKILL)
    psutil.Process(worker_pid).kill()
    psutil.Process(worker_pid).wait(timeout=10)
    # a crash between ask() and the job's creation: a RUNNING Optuna trial with an `asked` line and no job
    study = optuna.load_study(study_name=sweep, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    orphan = study.ask({"model.init_args.x": optuna.distributions.FloatDistribution(0.0, 1.0)})
    lines = [json.loads(x) for x in (sweep_dir / "trials.jsonl").read_text().splitlines()]
    n = max(line["n"] for line in lines) + 1
    with open(sweep_dir / "trials.jsonl", "a") as f:
        f.write(json.dumps({"event": "asked", "n": n, "number": orphan.number, "params": orphan.params,
                            "job_name": f"{sweep}-{n}", "time": time.time()}) + "\n")
    time.sleep(1.0)
    daemon.start()
    # then the daemon alone, later: its new worker lives on, waits for the socket, and is not doubled
    wait_for(lambda: len(_status(daemon, sweep)["trials"]) >= 6, timeout=60, what="6 trials started")
    worker_pid = int((sweep_dir / "worker.pid").read_text())
    daemon.kill(signal.SIGKILL)
    time.sleep(2.0)
    daemon.start()
    final = _wait_done(daemon, sweep)
    assert final["state"] == "completed"
    assert int((sweep_dir / "worker.pid").read_text()) == worker_pid
    trials = final["trials"]
    job_ids = [t["job_id"] for t in trials]
    assert len(trials) == 8 and len(set(job_ids)) == 8 and None not in job_ids
    assert n not in [t["n"] for t in trials]  # the orphan is not counted
    jobs = [j for j in daemon.client().call("list") if j["name"].startswith(f"{sweep}-")]
    assert sorted(j["id"] for j in jobs) == sorted(job_ids)  # no duplicate job for any trial
    assert all(t["state"] == "completed" and t["value"] is not None for t in trials)
    study = optuna.load_study(study_name=sweep, storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 8 and states[orphan.number] == "FAIL" and "RUNNING" not in states


def test_hyperband_prunes_a_clearly_bad_trial(daemon: DaemonProc) -> None:
    path = _sweep_file(daemon, "hb", {"model.init_args.x": {"values": [0.3, 5.0]}}, parallel=1, seed=1,
                       early_terminate={"type": "hyperband", "min_iter": 1, "eta": 3})
    sweep = _create(daemon, path, "model.init_args.steps=60", "model.init_args.step_time=0.05")
    final = _wait_done(daemon, sweep)
    by_x = {t["params"]["model.init_args.x"]: t for t in final["trials"]}
    assert [t["params"]["model.init_args.x"] for t in final["trials"]] == [0.3, 5.0]  # seed 1: the good one first
    assert by_x[0.3]["state"] == "completed"
    assert by_x[5.0]["state"] == "pruned"
    bad_job = daemon.status(by_x[5.0]["job_id"])
    assert bad_job["state"] == "stopped" and bad_job["global_step"] < 60
    assert final["best"]["params"]["model.init_args.x"] == 0.3


def test_sweep_stop_stops_running_trials_and_starts_no_more(daemon: DaemonProc) -> None:
    path = _sweep_file(daemon, "stopme", {"model.init_args.x": {"min": 0.0, "max": 1.0}}, method="random",
                       run_cap=10, parallel=2, seed=0)
    sweep = _create(daemon, path, "model.init_args.steps=400", "model.init_args.step_time=0.05")
    wait_for(lambda: sum(t["state"] == "running" for t in _status(daemon, sweep)["trials"]) == 2,
             timeout=60, what="2 running trials")
    assert "stop requested" in daemon.ctl("sweep", "stop", sweep).stdout
    final = _wait_done(daemon, sweep)
    assert final["state"] == "stopped" and len(final["trials"]) == 2
    assert all(daemon.status(t["job_id"])["state"] == "stopped" for t in final["trials"])


def test_bad_sweep_files_are_refused_and_nothing_is_created(daemon: DaemonProc) -> None:
    path = _sweep_file(daemon, "bad", {"model.init_args.x": {"distribution": "normal", "mu": 0, "sigma": 1}})
    proc = daemon.ctl("sweep", "create", str(path), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"supervisorctl: error: {path}: parameters.model.init_args.x.distribution: "
                                   "normal has no faithful Optuna equivalent (Optuna has no normal distribution)")
    # a key the job schema refuses is caught at create, naming the base config and the key
    path = _sweep_file(daemon, "badkey", {"supervision.budget": {"values": ["soon", "1h"]}})
    proc = daemon.ctl("sweep", "create", str(path), check=False)
    assert proc.returncode == 2 and "supervision.budget" in proc.stderr and "bad-base.yaml" not in proc.stderr
    assert "badkey-base.yaml: supervision.budget:" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert daemon.client().call("sweep_list") == [] and daemon.client().call("list") == []


def test_a_trial_whose_config_is_refused_fails_and_the_sweep_goes_on(daemon: DaemonProc) -> None:
    # create checks one sample point (the first value); the second is refused when its trial is submitted
    path = _sweep_file(daemon, "refused", {"supervision.budget": {"values": ["1h", "soon"]}}, seed=0)
    sweep = _create(daemon, path)
    final = _wait_done(daemon, sweep)
    by_budget = {t["params"]["supervision.budget"]: t for t in final["trials"]}
    assert final["state"] == "completed" and len(final["trials"]) == 2
    assert by_budget["1h"]["state"] == "completed" and by_budget["1h"]["value"] is not None
    refused = by_budget["soon"]
    assert refused["job_id"] is None and refused["state"] == "failed"
    assert refused["detail"].startswith("submit refused: ")
    assert "supervision.budget: expected a duration" in refused["detail"]
    assert len(daemon.client().call("list")) == 1 and final["note"] == "failed grid points are not retried"


def test_a_reboot_mid_sweep_relaunches_its_trials_from_best_and_finishes_it(daemon: DaemonProc) -> None:
    daemon.kill(signal.SIGTERM)
    daemon.start(ML_SUPERVISOR_BOOT_ID="boot-A")
    path = _sweep_file(daemon, "reboot", {"model.init_args.x": {"values": [0.1, 0.3]}}, parallel=2)
    sweep = _create(daemon, path, "model.init_args.steps=60", "model.init_args.step_time=0.05")

    def both_progressed() -> bool:
        trials = _status(daemon, sweep)["trials"]
        return len(trials) == 2 and all(daemon.status(t["job_id"])["global_step"] >= 12 for t in trials)

    wait_for(both_progressed, timeout=60, what="both trials past a checkpoint")
    # a "reboot": the daemon, the sweep worker and every trainer die at once; a new boot id after
    daemon.kill(signal.SIGKILL)
    daemon.kill_leftovers()
    time.sleep(0.5)
    daemon.start(ML_SUPERVISOR_BOOT_ID="boot-B")
    final = _wait_done(daemon, sweep)
    assert final["state"] == "completed" and len(final["trials"]) == 2
    for t in final["trials"]:
        job = daemon.status(t["job_id"])
        assert job["attempts"][0]["reason"] == "reboot"
        assert job["attempts"][1]["resumed_from"] == best_not_newest(job["job_dir"], 2)
        assert t["value"] == pytest.approx(objective(t["params"]["model.init_args.x"], 0.0) + 1 / 12)
    assert len([j for j in daemon.client().call("list") if j["name"].startswith(f"{sweep}-")]) == 2
