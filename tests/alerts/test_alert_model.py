"""make_alert: titles, levels and texts a person can act on; the W&B target from a job config."""

from __future__ import annotations

import json

import pytest

from supervisor.alerts import (
    Alert,
    WandbTarget,
    alert_for_job,
    enabled_alert_events,
    make_alert,
    wandb_target_from_config,
)
from supervisor.config import build_job_config
from supervisor.config.schema import ALERT_EVENTS

TARGET = WandbTarget(project="proj", entity=None, group="digits", run_id="r1", dir="/s/jobs/j1/wandb", mode="offline")


def test_restart_alert_names_cause_attempt_checkpoint_and_gpu() -> None:
    alert = make_alert(
        "restart",
        job_id="j1",
        job_name="digits",
        details={
            "cause": "exit code 1",
            "attempt": 4,
            "restarts": 3,
            "max_restarts": 10,
            "resumed_from": "/s/jobs/j1/checkpoints/epoch=3-step=400.ckpt",
            "resumed_score": 0.2312,
            "monitor": "val_loss",
            "resumed_step": 400,
            "gpus": [0, 3],
            "delay_s": 80,
            "error": "RuntimeError: CUDA error: an illegal memory access was encountered",
            "logs": "/s/jobs/j1/attempts/3/stderr.log",
            "host": "gpu-node-7",
        },
        wandb=TARGET,
        time=1000.0,
    )
    assert alert.title == "digits: restarted"
    assert alert.level == "WARN"
    assert alert.time == 1000.0
    lines = alert.text.splitlines()
    assert lines[0] == "Attempt 3 ended (exit code 1); relaunched as attempt 4."
    assert "Restarts: 3 of at most 10" in lines
    assert "Resumed from: /s/jobs/j1/checkpoints/epoch=3-step=400.ckpt (val_loss=0.2312, step 400)" in lines
    assert "GPU: 0, 3" in lines
    assert "Backoff before relaunch: 1m20s" in lines
    assert "Last error: RuntimeError: CUDA error: an illegal memory access was encountered" in lines
    assert "Job: digits (id j1) on gpu-node-7" in lines
    assert "Logs: /s/jobs/j1/attempts/3/stderr.log" in lines


def test_title_is_stable_across_a_crash_loop_so_wait_duration_throttles_it() -> None:
    titles = {
        make_alert("restart", job_id="j1", job_name="digits", details={"attempt": n, "cause": f"exit code {n}"},
                   wandb=None).title
        for n in range(2, 6)
    }
    assert titles == {"digits: restarted"}


@pytest.mark.parametrize(
    ("event", "level", "title_words", "details", "expected_lines"),
    [
        ("hang", "WARN", "hung", {"attempt": 3, "silent_s": 1900, "hang_timeout_s": 1800, "last_step": 1234,
                                  "stacks": "/s/a/2/stacks.txt"},
         ["Attempt 2 made no progress for 31m40s (hang timeout 30m00s); stopped it and relaunched as attempt 3.",
          "Last step: 1234", "Stack dump: /s/a/2/stacks.txt"]),
        ("gpu_fault", "ERROR", "GPU fault", {"gpu": 1, "fault": "Xid 79: GPU has fallen off the bus",
                                             "quarantined": True},
         ["GPU 1: Xid 79: GPU has fallen off the bus.", "Quarantined: yes, no new job will be placed on it"]),
        ("failed", "ERROR", "failed, gave up", {"reason": "max_restarts (10 in 1h) reached", "attempts": 11,
                                                "restarts": 10, "best_checkpoint": "/c/best.ckpt",
                                                "best_score": 0.5, "monitor": "val_acc"},
         ["Gave up: max_restarts (10 in 1h) reached. The job will NOT be restarted.", "Ran: 11 attempts, 10 restarts",
          "Best checkpoint: /c/best.ckpt (val_acc=0.5)"]),
        ("budget", "INFO", "time budget reached", {"budget_s": 86400, "elapsed_s": 86460,
                                                   "best_checkpoint": "/c/b.ckpt"},
         ["Time budget spent (24h00m, used 24h01m); the job was stopped and keeps its best checkpoint as the result.",
          "Best checkpoint: /c/b.ckpt"]),
        ("completed", "INFO", "completed", {"elapsed_s": 3725, "attempts": 2, "restarts": 1},
         ["Training finished normally after 1h02m.", "Ran: 2 attempts, 1 restarts", "Best checkpoint: none"]),
        ("stopped", "INFO", "stopped", {"by": "alice"}, ["Stopped on request by alice."]),
        ("reboot", "WARN", "recovered after a node reboot", {"previous_boot_id": "b0", "boot_id": "b1",
                                                              "attempt": 5, "resumed_from": "/c/last.ckpt"},
         ["Boot id: b0 -> b1", "New attempt: 5", "Resumed from: /c/last.ckpt"]),
    ],
)
def test_each_event_has_its_title_level_and_facts(
    event: str, level: str, title_words: str, details: dict, expected_lines: list[str]
) -> None:
    alert = make_alert(event, job_id="j9", job_name="bert-ft", details={**details, "host": "n1"}, wandb=None)
    assert alert.title == f"bert-ft: {title_words}"
    assert alert.level == level
    lines = alert.text.splitlines()
    for line in expected_lines:
        assert line in lines, f"{line!r} not in {lines}"
    assert lines[-2:] == ["Job: bert-ft (id j9) on n1", "Logs: supervisorctl logs j9"]


def test_the_core_detail_keys_read_well() -> None:
    # The keys supervisor.core passes to its alert hook today.
    restart = make_alert("restart", job_id="j1", job_name="digits", wandb=None, details={
        "cause": "crash", "detail": "exit code 1 (RuntimeError: boom)", "attempt": 3, "restarts": 2, "delay": 20.0,
        "gpus": [1], "previous_resumed_from": "/c/epoch=1.ckpt", "message": "restart 2 of 10 within 1h",
        "host": "n1"})
    assert restart.text.splitlines() == [
        "Attempt 2 ended (crash: exit code 1 (RuntimeError: boom)); relaunched as attempt 3.",
        "Restarts: 2",
        "Policy: restart 2 of 10 within 1h",
        "Ended attempt had resumed from: /c/epoch=1.ckpt",
        "Backoff before relaunch: 20s",
        "GPU: 1",
        "Job: digits (id j1) on n1",
        "Logs: supervisorctl logs j1",
    ]
    hang = make_alert("hang", job_id="j1", job_name="digits", wandb=None, details={
        "cause": "hang", "detail": "no heartbeat for 30m", "attempt": 2, "restarts": 1, "delay": 0.0, "host": "n1"})
    assert hang.text.splitlines()[:3] == ["Attempt 1 made no progress; stopped it and relaunched as attempt 2.",
                                          "Detail: no heartbeat for 30m", "Restarts: 1"]
    failed = make_alert("failed", job_id="j1", job_name="digits", wandb=None, details={
        "end_reason": "max_restarts", "message": "gave up: 10 restarts within 1h.", "best_checkpoint": "/c/b.ckpt",
        "score": 0.25, "step": 900, "host": "n1"})
    assert failed.text.splitlines()[:2] == ["Gave up: 10 restarts within 1h. The job will NOT be restarted.",
                                            "Best checkpoint: /c/b.ckpt (score=0.25, step 900)"]
    budget = make_alert("budget", job_id="j1", job_name="digits", wandb=None, details={
        "end_reason": "budget", "message": "time budget 2h spent", "best_checkpoint": None, "score": None,
        "step": None, "host": "n1"})
    assert "Reason: time budget 2h spent" in budget.text.splitlines()
    reboot = make_alert("reboot", job_id="j1", job_name="digits", wandb=None, details={"jobs": ["j1", "j2"]})
    assert "Jobs recovered on this node: j1, j2" in reboot.text.splitlines()


def test_every_configurable_event_builds_and_unknown_event_is_refused() -> None:
    for event in ALERT_EVENTS:
        assert make_alert(event, job_id="j", job_name="n", details={}, wandb=None).text
    with pytest.raises(ValueError, match="unknown alert event 'exploded'"):
        make_alert("exploded", job_id="j", job_name="n", details={}, wandb=None)


def test_unknown_details_are_kept_in_text_and_made_json_safe() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd-object"

    alert = make_alert("hang", job_id="j", job_name="n", wandb=None,
                       details={"exotic": Odd(), "downtime_s": 125.0, "ratio": float("nan"), "host": "h"})
    assert "exotic: odd-object" in alert.text.splitlines()
    assert "downtime: 2m05s" in alert.text.splitlines()
    json.dumps(alert.to_dict(), allow_nan=False)  # alerts.jsonl refuses NaN
    assert alert.details["exotic"] == "odd-object"


def test_long_values_are_cut_to_one_short_line() -> None:
    alert = make_alert("failed", job_id="j", job_name="n", wandb=None,
                       details={"error": "Traceback\n" + "x" * 5000, "host": "h"})
    line = next(x for x in alert.text.splitlines() if x.startswith("Last error: "))
    assert len(line) < 450 and line.endswith("…")


def test_alert_round_trips_through_json() -> None:
    alert = make_alert("restart", job_id="j1", job_name="digits", details={"attempt": 2}, wandb=TARGET)
    again = Alert.from_dict(json.loads(json.dumps(alert.to_dict())))
    assert again == alert
    assert again.wandb is not None and again.wandb.alert_run_id == "r1-supervisor"


def test_wandb_target_and_enabled_events_from_a_real_job_config() -> None:
    raw = {
        "name": "digits",
        "model": {"class_path": "pkg.Model"},
        "data": {"class_path": "pkg.Data"},
        "logger": {"wandb": {"mode": "offline", "run_id": "abc123", "project": "mnist"}},
        "supervision": {"alerts": ["restart", "failed"]},
    }
    cfg = build_job_config(raw, source="digits.yaml")
    target = wandb_target_from_config(cfg, job_id="j1", job_dir="/s/jobs/j1")
    assert target == WandbTarget(project="mnist", entity=None, group="digits", run_id="abc123",
                                 dir="/s/jobs/j1/wandb", mode="offline")
    assert enabled_alert_events(cfg) == {"restart", "failed"}

    raw["logger"]["wandb"]["mode"] = "disabled"
    assert wandb_target_from_config(build_job_config(raw, source="d.yaml"), job_id="j1", job_dir="/s") is None
    del raw["supervision"]
    defaults = enabled_alert_events(build_job_config(raw, source="d.yaml"))
    assert "restart" in defaults and "completed" in defaults and "stopped" not in defaults


def test_alert_for_job_follows_the_jobs_alert_list() -> None:
    raw = {"name": "digits", "model": {"class_path": "pkg.Model"}, "data": {"class_path": "pkg.Data"},
           "logger": {"wandb": {"mode": "offline", "run_id": "abc"}},
           "supervision": {"alerts": ["failed"]}}
    cfg = build_job_config(raw, source="digits.yaml")
    kw = {"job_id": "j1", "job_name": "digits", "job_dir": "/s/jobs/j1", "details": {"reason": "no progress"}}
    assert alert_for_job("restart", cfg=cfg, **kw) is None
    alert = alert_for_job("failed", cfg=cfg, **kw)
    assert alert is not None and alert.title == "digits: failed, gave up"
    assert alert.wandb == wandb_target_from_config(cfg, job_id="j1", job_dir="/s/jobs/j1")
    no_config = alert_for_job("restart", cfg=None, **kw)
    assert no_config is not None and no_config.wandb is None


def test_details_keep_every_fact_the_text_words() -> None:
    # alerts.jsonl is read back by scripts (the chaos soak counts restart alerts per attempt)
    facts = {"cause": "crash", "detail": "exit code 1", "attempt": 3, "restarts": 2, "max_restarts": 10}
    alert = make_alert("restart", job_id="j1", job_name="digits", details=facts, wandb=None)
    assert "attempt 3" in alert.text
    assert {k: alert.details[k] for k in facts} == facts
