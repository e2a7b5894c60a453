"""The profiler's report of an attempt, for the job page (``trainer.profiler: simple | advanced | pytorch``).

The trainer has the profiler write ``<stage>-profile[-<rank>].txt`` into the
attempt directory (``trainer/profiling.py``); this reads those text reports,
each cut to its first ``MAX_PROFILE`` bytes (an advanced profiler's report can
be large). Trace files of the PyTorch profiler are listed by name only.
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from supervisor.jobfiles.safe_read import list_dir, read_range, regular_size

MAX_PROFILE = 256 * 1024
REPORT_GLOB = "*-profile*.txt"
TRACE_GLOB = "*profile*.json"


def read_profile(attempt_dir: Path) -> list[dict[str, Any]]:
    """``[{name, size, text, truncated}]`` for each report in ``attempt_dir`` (traces: ``text`` is None)."""
    out: list[dict[str, Any]] = []
    try:  # the trainer's directory and files (safe_read: regular files only, bounded, never a wait)
        names = list_dir(attempt_dir) or []
    except OSError:
        return out
    paths = [attempt_dir / name for pattern in (REPORT_GLOB, TRACE_GLOB)
             for name in sorted(n for n in names if fnmatch(n, pattern))]
    for path in paths:
        try:
            size = regular_size(path)
            text = None
            if size is not None and path.suffix == ".txt":
                data = read_range(path, 0, MAX_PROFILE, total_cap=0)
                text = data.decode("utf-8", "replace") if data is not None else None
        except OSError:
            continue  # does not answer: nothing to show
        if size is None:
            continue  # removed while listing, or not a regular file
        out.append({"name": path.name, "size": size, "text": text, "truncated": size > MAX_PROFILE})
    return out
