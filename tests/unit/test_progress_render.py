"""The terminal's progress: the bar, the speed and ETA text, and ``watch``'s screen and plain lines, from status
objects as the daemon gives them (GPUs as ``supervisorctl gpus --json`` gives them over NVML)."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from supervisor.cli.render import lost_text, progress_bar, progress_text, rate_text
from supervisor.cli.watch import Snapshot, gpu_text, plain_line, screen


def job(**progress: Any) -> dict[str, Any]:
    base = {"step": 680, "target_step": 1000, "target_from": "max_steps", "percent": 68.0, "steps_per_s": 41.2,
            "eta_s": 7980.0, "ends_by": "target", "lost_s": 0.0, "lost_share": 0.0}
    base.update(progress)
    return {"id": "digits-a1b2c3", "state": "running", "restarts": 2, "global_step": 680, "progress": base,
            "attempts": [{"n": 3, "gpus": [1], "ended_at": None}]}


GPUS = [
    {"index": 0, "memory_used_mib": 512, "memory_total_mib": 81559, "temperature_c": 35.0, "jobs": []},
    {"index": 1, "memory_used_mib": 40213, "memory_total_mib": 81559, "temperature_c": 71.4,
     "jobs": ["digits-a1b2c3"]},
]


def test_the_bar_speed_and_eta_as_the_issue_shows_them() -> None:
    assert progress_bar(68) == "██████▊░░░"
    assert progress_bar(0) == "░" * 10 and progress_bar(100) == "█" * 10 and progress_bar(None) == "░" * 10
    assert rate_text(41.2) == "41 it/s" and rate_text(2.46) == "2.5 it/s" and rate_text(0.25) == "4.0 s/it"
    assert rate_text(None) == "- it/s"
    assert progress_text(job()["progress"]) == "██████▊░░░ 68%  41 it/s  ETA 2h13m"
    assert progress_text(job(ends_by="budget")["progress"]).endswith("ETA 2h13m (budget first)")
    budget_only = job(target_from="budget", percent=25.0, eta_s=750.0, ends_by="budget")["progress"]
    assert progress_text(budget_only) == "██▌░░░░░░░ 25% of budget  41 it/s  ETA 12m30s"
    assert progress_text(job(percent=None, target_step=None, eta_s=None, ends_by=None)["progress"]) \
        == "░░░░░░░░░░ ?  41 it/s"
    assert progress_text(None) == "-"
    assert lost_text(job(lost_s=192.0, lost_share=0.042)["progress"]) == "3m12s (4.2%)"
    assert lost_text(job()["progress"]) == "-"


def test_gpu_use_per_job_from_nvml() -> None:
    assert gpu_text(job(), GPUS) == "1: 39.3/80G 71C"
    assert gpu_text(job(), None) == "-"  # no NVML
    ended = job()
    ended["attempts"][0]["ended_at"] = 1.0
    ended["id"] = "other"
    assert gpu_text(ended, GPUS) == "-"  # holds no GPU now


def test_the_live_screen_and_the_plain_line() -> None:
    snap = Snapshot(jobs=[job(lost_s=192.0, lost_share=0.042)], gpus=GPUS, at=1_700_000_000.0,
                    last_event={"digits-a1b2c3": {"time": 1_700_000_000.0, "kind": "restart", "message": "hang"}})
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(screen(snap, None))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("ml-supervisor watch  1 job  ") and "no NVML" not in lines[0]
    assert lines[1].split() == ["JOB", "STATE", "PROGRESS", "STEP", "SPEED", "ETA", "RESTARTS", "LOST", "GPU", "LAST",
                                "EVENT"]
    row = lines[2]
    for cell in ("digits-a1b2c3", "running", "██████▊░░░  68%", "680/1000", "41 it/s", "2h13m", "3m12s (4.2%)",
                 "1: 39.3/80G 71C", "restart: hang"):
        assert cell in row, cell
    plain = plain_line(snap.jobs[0], snap)
    assert "digits-a1b2c3 running step 680/1000 68%  41 it/s  ETA 2h13m restarts 2 lost 3m12s (4.2%)" in plain
    assert plain.endswith("gpu 1: 39.3/80G 71C")
    assert "█" not in plain
