"""The profiler's report of an attempt, for the job page (``trainer.profiler: simple | advanced | pytorch``).

The trainer has the profiler write ``<stage>-profile[-<rank>].txt`` into the
attempt directory (``trainer/profiling.py``); this reads those text reports,
each cut to its first ``MAX_PROFILE`` bytes (an advanced profiler's report can
be large). Trace files of the PyTorch profiler are listed by name only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MAX_PROFILE = 256 * 1024
REPORT_GLOB = "*-profile*.txt"
TRACE_GLOB = "*profile*.json"


def read_profile(attempt_dir: Path) -> list[dict[str, Any]]:
    """``[{name, size, text, truncated}]`` for each report in ``attempt_dir`` (traces: ``text`` is None)."""
    out: list[dict[str, Any]] = []
    for path in sorted(attempt_dir.glob(REPORT_GLOB)) + sorted(attempt_dir.glob(TRACE_GLOB)):
        try:
            size = path.stat().st_size
            text = None
            if path.suffix == ".txt":
                with open(path, "rb") as handle:
                    text = handle.read(MAX_PROFILE).decode("utf-8", "replace")
        except OSError:
            continue  # removed while listing: nothing to show
        out.append({"name": path.name, "size": size, "text": text, "truncated": size > MAX_PROFILE})
    return out
