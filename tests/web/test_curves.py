"""The curve reader: metrics.jsonl of every attempt, read on from a cursor, whole lines only."""

from __future__ import annotations

import json
from pathlib import Path

from supervisor.jobfiles.layout import JobLayout
from supervisor.web.curves import Cursor, read_points


def _line(step: int, **metrics: float) -> str:
    return json.dumps({"time": 1000.0 + step, "step": step, "epoch": step // 10, "metrics": metrics}) + "\n"


def _write(job: Path, attempt: int, text: str, mode: str = "w") -> Path:
    path = JobLayout(job).attempt(attempt).metrics
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open(mode) as f:
        f.write(text)
    return path


def test_reads_across_attempts_and_resumes_from_the_cursor(tmp_path: Path) -> None:
    _write(tmp_path, 1, _line(1, train_loss=2.0) + _line(2, train_loss=1.5))
    # attempt 2 resumed from step 1's checkpoint: its steps rewind
    second = _write(tmp_path, 2, _line(1, train_loss=1.9))
    first = read_points(tmp_path, [1, 2, 3], Cursor())
    assert [(p["attempt"], p["step"], p["metrics"]["train_loss"]) for p in first["points"]] == [
        (1, 1, 2.0), (1, 2, 1.5), (2, 1, 1.9)]
    assert first["points"][0] == {"attempt": 1, "step": 1, "epoch": 0, "time": 1001.0,
                                  "metrics": {"train_loss": 2.0}}
    # attempt 3 has no file yet: the cursor waits at its start
    assert first["cursor"] == {"attempt": 3, "offset": 0} and first["more"] is False

    _write(tmp_path, 3, _line(2, train_loss=1.2) + '{"time": 1003.0, "step": 3', "w")
    _write(tmp_path, 2, _line(2, train_loss=1.4), "a")  # late lines of an earlier attempt are not re-read
    nxt = read_points(tmp_path, [1, 2, 3], Cursor(**first["cursor"]))
    assert [(p["attempt"], p["step"]) for p in nxt["points"]] == [(3, 2)]
    assert nxt["cursor"] == {"attempt": 3, "offset": len(_line(2, train_loss=1.2))}
    assert second.exists()


def test_bad_lines_are_skipped_and_non_finite_values_dropped(tmp_path: Path) -> None:
    _write(tmp_path, 1, "not json\n" + '{"step": "x"}\n' + '{"step": 4, "metrics": [1]}\n'
           + '{"step": 5, "metrics": {"loss": NaN, "acc": 0.5, "flag": true, "name": "x"}}\n' + _line(6, loss=0.3))
    points = read_points(tmp_path, [1], Cursor())["points"]
    assert [(p["step"], p["metrics"]) for p in points] == [(5, {"acc": 0.5}), (6, {"loss": 0.3})]


def test_a_large_file_comes_in_pieces_without_losing_a_line(tmp_path: Path) -> None:
    lines = [_line(i, train_loss=1.0 / (i + 1)) for i in range(200)]
    _write(tmp_path, 1, "".join(lines))
    seen: list[int] = []
    cursor = Cursor()
    for _ in range(100):
        answer = read_points(tmp_path, [1], cursor, max_read=1000)
        seen.extend(p["step"] for p in answer["points"])
        cursor = Cursor(**answer["cursor"])
        if not answer["more"]:
            break
    assert seen == list(range(200))


def test_an_overlong_line_is_skipped_not_stalled_on(tmp_path: Path) -> None:
    _write(tmp_path, 1, _line(1, a=1.0) + '{"step": 2, "metrics": {"x": "' + "y" * 5000 + '"}}\n' + _line(3, a=3.0))
    seen: list[int] = []
    cursor = Cursor()
    for _ in range(10):
        answer = read_points(tmp_path, [1], cursor, max_read=200)
        seen.extend(p["step"] for p in answer["points"])
        cursor = Cursor(**answer["cursor"])
        if not answer["more"]:
            break
    assert seen == [1, 3]
