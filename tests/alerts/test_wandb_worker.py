"""The wandb worker process on its own: the JSON protocol, a record larger than a log block."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from supervisor.alerts import WandbTarget, make_alert
from tests.alerts.wandb_offline_log import read_alerts, read_record_bytes


def _run_worker(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor.alerts.wandb_worker", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_worker_writes_alerts_and_prints_only_its_json_result(tmp_path: Path) -> None:
    target = WandbTarget(project="p", entity=None, group="g", run_id="big", dir=str(tmp_path / "wandb"),
                         mode="offline")
    short = make_alert("restart", job_id="j", job_name="big", wandb=target, details={"attempt": 2})
    # 80 KB of text spans three 32 KiB blocks of the log: FIRST, MIDDLE and LAST chunks.
    long_text = "".join(f"line {i:05d} of a very long stack dump\n" for i in range(2000))
    request = {
        "wait_duration_s": 42,
        "deadline_s": 120,
        "batches": [{"target": target.to_dict(),
                     "alerts": [short.to_dict(), {**short.to_dict(), "alert_id": "x", "text": long_text}]}],
    }
    (tmp_path / "req.json").write_text(json.dumps(request))
    done = _run_worker(["--input", str(tmp_path / "req.json")])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1  # nothing but the result, whatever wandb prints
    result = json.loads(lines[0])
    assert result["ok"] is True
    (batch,) = result["results"]
    assert batch["status"] == "offline" and batch["alert_ids"] == [short.alert_id, "x"]
    assert batch["init_s"] > 0 and result["timings"]["import_s"] > 0

    run_file = Path(batch["run_dir"]) / "run-big-supervisor.wandb"
    assert max(len(r) for r in read_record_bytes(run_file)) > 2 * 32768
    alerts = read_alerts(run_file)
    assert [a["text"] for a in alerts] == [short.text, long_text]
    assert {a["wait_duration_ms"] for a in alerts} == {42_000}


def test_worker_reports_an_unreadable_request_as_json() -> None:
    done = _run_worker([], stdin="this is not json")
    assert done.returncode == 2
    result = json.loads(done.stdout)
    assert result["ok"] is False and result["retriable"] is False
    assert result["error"].startswith("unreadable request:")
