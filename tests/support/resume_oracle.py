"""Which checkpoint a relaunched attempt must resume from, computed by the tests on their own.

Written from the documented policy (README, ``supervision.resume_from``; the manifest's format in
``supervisor/jobfiles/manifest.py``'s docstring), never with the product's code (``choose_resume``,
``rank_best``, ``rank_newest``, ``live_in``, ``verify_checkpoint``): a test that asks the product what
the right answer is passes whatever the product does. The manifest is read as plain JSON lines.

The policy, as documented:

- the live checkpoints are the ``save`` lines not undone by a later ``remove`` (that path), ``abandon``
  (its paths) or ``unusable`` (every save at or past its step); a path saved again keeps its latest line;
- ``best``: by score in the monitor's mode; a checkpoint without a score comes after every scored one;
  on equal scores a top-k file beats ``last.ckpt`` or a signal save (their score is the last validated
  one, carried over), then the higher step, then the later save; without scores, the newest first;
- ``last``: the highest step, then the later save;
- ``auto``: ``last`` while the newest checkpoint's metrics were finite, else ``best``; either way a
  checkpoint with non-finite metrics is never taken;
- the first candidate that is whole on disk wins (its order, then the other order's rest); none: scratch.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Save = dict[str, Any]  # a manifest "save" line, as written


def manifest_lines(manifest: Path) -> list[dict[str, Any]]:
    """The manifest's complete JSON object lines (a torn last line, or a line that is no object, dropped)."""
    try:
        text = manifest.read_bytes()
    except FileNotFoundError:
        return []
    lines = []
    for raw in text[:text.rfind(b"\n") + 1].splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def live_saves(lines: Iterable[dict[str, Any]], *, before_attempt: int | None = None) -> list[Save]:
    """The live checkpoints' save lines, oldest save first; only lines of attempts < ``before_attempt``
    when given (what the daemon saw when it launched that attempt: the attempt itself rewinds and saves
    only after it started)."""
    live: dict[str, Save] = {}
    for line in lines:
        if before_attempt is not None and int(line.get("attempt") or 0) >= before_attempt:
            continue
        event = line.get("event")
        if event == "save":
            live.pop(line["path"], None)
            live[line["path"]] = line
        elif event == "remove":
            live.pop(line.get("path"), None)
        elif event == "abandon":
            for path in line.get("paths") or []:
                live.pop(path, None)
        elif event == "unusable":
            for path in [p for p, save in live.items() if save["step"] >= int(line["from_step"])]:
                del live[path]
    return list(live.values())


def _scored(save: Save) -> bool:
    return bool(save.get("monitor")) and save.get("score") is not None


def best_first(saves: Iterable[Save]) -> list[Save]:
    """The saves, best first (see the module docstring)."""
    saves = list(saves)
    scored = [s for s in saves if _scored(s)]
    unscored = [s for s in saves if not _scored(s)]

    def better_score(s: Save) -> float:
        return float(s["score"]) if s.get("mode", "min") == "min" else -float(s["score"])

    # Python sorts are stable: sort by the weakest tie-break first, the score last.
    scored.sort(key=lambda s: float(s.get("time", 0.0)), reverse=True)
    scored.sort(key=lambda s: int(s["step"]), reverse=True)
    scored.sort(key=lambda s: s.get("kind", "topk") != "topk")
    scored.sort(key=better_score)
    return scored + newest_first(unscored)


def newest_first(saves: Iterable[Save]) -> list[Save]:
    """The saves, highest step first, then the later save."""
    return sorted(saves, key=lambda s: (int(s["step"]), float(s.get("time", 0.0))), reverse=True)


def whole_on_disk(save: Save) -> str | None:
    """None when the file is a whole torch-style zip (size as recorded, a data.pkl, every CRC right)."""
    path = save["path"]
    if not os.path.isfile(path):
        return "missing"
    if int(save.get("size") or 0) > 0 and os.path.getsize(path) != int(save["size"]):
        return "size differs from the manifest's"
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(n.split("/")[-1] == "data.pkl" and n.count("/") <= 1 for n in archive.namelist()):
                return "no data.pkl"
            if archive.testzip() is not None:
                return "bad CRC"
    except Exception as exc:  # any failure to read it whole: not whole
        return f"unreadable zip: {type(exc).__name__}"
    return None


def expected_resume(saves: Iterable[Save], resume_from: str,
                    verify: Callable[[Save], str | None] | None = whole_on_disk) -> str | None:
    """The path the policy ``resume_from`` names among ``saves`` (None: from scratch).

    ``verify``: why a candidate is not whole (None: it is); ``None`` accepts every candidate.
    """
    saves = list(saves)
    by_best, by_newest = best_first(saves), newest_first(saves)
    if resume_from == "best":
        order, skip_non_finite = by_best, False
    elif resume_from == "last":
        order, skip_non_finite = by_newest, False
    elif resume_from == "auto":
        newest_finite = not by_newest or by_newest[0].get("finite", True) is not False
        order, skip_non_finite = (by_newest if newest_finite else by_best), True
    else:
        raise ValueError(resume_from)
    rest = by_newest if order is by_best else by_best
    seen: set[str] = set()
    for save in order + rest:
        if save["path"] in seen:
            continue
        seen.add(save["path"])
        if skip_non_finite and save.get("finite", True) is False:
            continue
        if verify is None or verify(save) is None:
            return str(save["path"])
    return None


def resume_for(manifest: Path, attempt: int, resume_from: str = "best",
               verify: Callable[[Save], str | None] | None = None) -> str | None:
    """The checkpoint attempt ``attempt`` must have resumed from, by the manifest's lines of the attempts
    before it. ``verify`` None: every checkpoint counts as whole (the fake trainer's are; a file moved
    aside by the attempt's own rewind is no longer where the line says)."""
    return expected_resume(live_saves(manifest_lines(manifest), before_attempt=attempt), resume_from, verify)


def newest_for(manifest: Path, attempt: int) -> str | None:
    """The newest checkpoint before ``attempt``: what a daemon that ignored ``best`` would take."""
    order = newest_first(live_saves(manifest_lines(manifest), before_attempt=attempt))
    return str(order[0]["path"]) if order else None


def best_not_newest(job_dir: str | Path, attempt: int) -> str:
    """The best checkpoint before ``attempt`` (by this module's rule), checked to differ from the newest one:
    a test whose run leaves them equal could not tell a daemon that resumes from the newest from one that
    resumes from the best (the fake trainer's scores and its ``last.ckpt`` make them differ)."""
    manifest = Path(job_dir) / "checkpoints" / "manifest.jsonl"
    best, newest = resume_for(manifest, attempt), newest_for(manifest, attempt)
    assert best is not None and best != newest, f"before attempt {attempt}: best {best}, newest {newest}"
    return best


def best_of(job_dir: str | Path) -> str | None:
    """The best live checkpoint of the job now (what its status's ``best_checkpoint`` must name)."""
    lines = manifest_lines(Path(job_dir) / "checkpoints" / "manifest.jsonl")
    return expected_resume(live_saves(lines), "best", verify=None)
