"""``api/progress_view.py`` on real job files: the manifest's saves give each attempt's resume step (``last.ckpt``
as it was before the attempt), the heartbeats and the tail of ``metrics.jsonl`` give the samples, the frozen
config the target; a starting attempt stands at its resume step; a planted FIFO costs nothing but its part."""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from supervisor.api.progress_view import METRICS_TAIL, progress_view
from supervisor.jobfiles.heartbeat import Heartbeat, write_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import CheckpointEntry, record_save
from supervisor.rules.states import JobState
from supervisor.store import AttemptRow, JobRow

T0 = 1_700_000_000.0


def save(layout: JobLayout, name: str, step: int, attempt: int, epoch: int = 0) -> str:
    path = str(layout.root / "checkpoints" / name)
    record_save(layout.manifest, CheckpointEntry(path=path, step=step, epoch=epoch, monitor=None, score=None,
                                                 mode="min", size=1, time=T0 + step, attempt=attempt))
    return path


def metrics(layout: JobLayout, n: int, rows: list[tuple[float, int, int]]) -> None:
    layout.attempt(n).dir.mkdir(parents=True, exist_ok=True)
    with open(layout.attempt(n).metrics, "a") as f:
        for t, step, epoch in rows:
            f.write(json.dumps({"time": T0 + t, "step": step, "epoch": epoch, "metrics": {"loss": 0.5}}) + "\n")


def beat(layout: JobLayout, n: int, t: float, step: int, phase: str = "train", **marks: float) -> None:
    layout.attempt(n).dir.mkdir(parents=True, exist_ok=True)
    write_heartbeat(layout.attempt(n).heartbeat, Heartbeat(
        pid=1, attempt=n, time=T0 + t, started_at=T0 + t - 30, phase=phase, step=step, epoch=step // 100,
        marks={k: T0 + v for k, v in marks.items()}))


def test_a_restart_as_the_files_tell_it(tmp_path: Path) -> None:
    layout = JobLayout(tmp_path / "job")
    (layout.root / "checkpoints").mkdir(parents=True)
    frozen = OmegaConf.create({"trainer": {"max_epochs": 10}})
    # attempt 1: 10 steps/s, checkpoints at 100 and 200 (last.ckpt rewritten at each), killed at step 260, t=26
    save(layout, "epoch=0-step=100.ckpt", 100, 1)
    last = save(layout, "last.ckpt", 100, 1)
    save(layout, "epoch=1-step=200.ckpt", 200, 1, epoch=1)
    save(layout, "last.ckpt", 200, 1, epoch=1)
    metrics(layout, 1, [(t, 10 * t, (10 * t - 1) // 100 if t else 0) for t in range(1, 27)])
    beat(layout, 1, 26, 260, first_step=0.1)
    # attempt 2 resumed from last.ckpt (step 200 as attempt 1 left it) and rewrites it later at 300
    save(layout, "last.ckpt", 300, 2, epoch=2)
    rows = [AttemptRow(job_id="j", n=1, started_at=T0 - 20, ended_at=T0 + 27, reason="crash"),
            AttemptRow(job_id="j", n=2, started_at=T0 + 28, resumed_from=last)]
    job = JobRow(id="j", name="j", state=JobState.RUNNING, created_at=T0 - 30, updated_at=T0, job_dir=str(layout.root),
                 workdir="/", config_source="x", first_started_at=T0 - 20, budget_s=None)

    # attempt 2 still in setup: its beat says step 0, the run stands at 200
    beat(layout, 2, 40, 0, phase="setup")
    p = progress_view(layout, job, rows, frozen, 0, T0 + 40)
    assert p["step"] == 200 and p["steps_per_epoch"] == 100 and p["target_step"] == 1000
    assert p["percent"] == 20.0
    assert p["steps_per_s"] == 10.0  # attempt 1's, until attempt 2 has two samples
    assert p["restarts"] == [{"attempt": 2, "after": "crash", "resumed_step": 200, "reached_step": 260,
                              "downtime_s": 14.0}]  # 26 -> now (40): no first step yet

    # attempt 2 training from t=45 at 5 steps/s; now t=65
    metrics(layout, 2, [(t, 200 + 5 * (t - 45), (200 + 5 * (t - 45) - 1) // 100) for t in range(46, 66)])
    beat(layout, 2, 65, 300, first_step=45.2)
    p = progress_view(layout, job, rows, frozen, 300, T0 + 65)
    assert p["step"] == 300 and p["steps_per_s"] == 5.0 and p["eta_s"] == 140.0
    assert p["downtime_s"] == 19.2  # 26 -> 45.2
    assert p["recomputed_steps"] == 60  # 200..260 made twice
    assert p["lost_s"] == round(19.2 + 60 * 0.1, 1)


def test_a_long_metrics_file_is_read_from_its_tail_and_a_fifo_costs_only_its_part(tmp_path: Path) -> None:
    layout = JobLayout(tmp_path / "job")
    layout.root.mkdir()
    rows = [AttemptRow(job_id="j", n=1, started_at=T0)]
    job = JobRow(id="j", name="j", state=JobState.RUNNING, created_at=T0, updated_at=T0, job_dir=str(layout.root),
                 workdir="/", config_source="x", first_started_at=T0, budget_s=7200)
    # 20 steps/s for the first 3000 s, then 50 steps/s: only the tail (the last minute) counts
    metrics(layout, 1, [(t, 20 * t, 0) for t in range(0, 3000)] + [(3000 + t, 60000 + 50 * t, 0) for t in range(100)])
    assert os.path.getsize(layout.attempt(1).metrics) > 2 * METRICS_TAIL
    frozen = OmegaConf.create({"trainer": {"max_steps": 100000}})
    p = progress_view(layout, job, rows, frozen, 64950, T0 + 3099)
    assert p["steps_per_s"] == 50.0 and p["ends_by"] == "target"

    # the manifest and the heartbeat planted as FIFOs: no wait, no error, the rest still answers
    layout.manifest.parent.mkdir()
    os.mkfifo(layout.manifest)
    layout.attempt(1).heartbeat.unlink(missing_ok=True)
    os.mkfifo(layout.attempt(1).heartbeat)
    p = progress_view(layout, job, rows, frozen, 64950, T0 + 3099)
    assert p["steps_per_s"] == 50.0
    # and the metrics file itself: no samples, no speed, still an answer
    layout.attempt(1).metrics.unlink()
    os.mkfifo(layout.attempt(1).metrics)
    p = progress_view(layout, job, rows, frozen, 64950, T0 + 3099)
    assert p["steps_per_s"] is None and p["percent"] == 65.0 and p["eta_s"] is None
