"""The local record of every alert: ``<state_dir>/alerts.jsonl``.

Append-only, two kinds of lines, both written by the dispatcher's threads:

    {"kind": "alert", "alert_id": ..., "job_id": ..., "event": ..., "title": ..., "text": ...,
     "level": ..., "time": ..., "wandb": {...} | null, "details": {...}, "channels": ["wandb", "webhook"]}
    {"kind": "delivery", "alert_id": ..., "channel": "wandb" | "webhook", "status": ..., "time": ...,
     "attempts": n, "error": str | null, ...channel facts (mode, run_dir, ...)}

An alert line is written when the dispatcher accepts an alert, before any
delivery is tried, so an alert survives a daemon killed mid-delivery (its
channels then read "pending"). ``read_alerts`` folds the lines into one dict per
alert.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from supervisor.alerts.model import Alert
from supervisor.jobfiles.atomic import append_json_line, read_json_lines

ALERTS_FILE = "alerts.jsonl"

# Delivery statuses of one channel.
DELIVERED = "delivered"  # accepted by W&B online / the webhook answered 2xx
OFFLINE = "offline"  # written into the offline W&B run file; `wandb sync <run_dir>` sends it
THROTTLED = "throttled"  # same title sent less than wait_duration ago (crash loop): not re-sent
FAILED = "failed"  # every try failed; the alert lives on here and in the daemon log
DROPPED = "dropped"  # the channel's queue was full or the dispatcher stopped first
PENDING = "pending"  # no delivery record (yet): in flight, or the daemon died first

OK_STATUSES = frozenset({DELIVERED, OFFLINE, THROTTLED})


def alerts_path(state_dir: str | Path) -> Path:
    """Where the alerts of a state dir are kept."""
    return Path(state_dir) / ALERTS_FILE


def record_alert(path: str | Path, alert: Alert, channels: list[str]) -> None:
    """Append the alert line (before any delivery is tried)."""
    append_json_line(path, {"kind": "alert", **alert.to_dict(), "channels": list(channels)})


def record_delivery(
    path: str | Path,
    alert_id: str,
    channel: str,
    status: str,
    *,
    attempts: int = 0,
    error: str | None = None,
    **facts: Any,
) -> None:
    """Append how delivering ``alert_id`` over ``channel`` ended."""
    append_json_line(
        path,
        {
            "kind": "delivery",
            "alert_id": alert_id,
            "channel": channel,
            "status": status,
            "time": time.time(),
            "attempts": attempts,
            "error": error,
            **facts,
        },
    )


def read_alerts(state_dir: str | Path, *, job_id: str | None = None) -> list[dict[str, Any]]:
    """Every alert of ``alerts.jsonl`` (oldest first), each with ``deliveries`` and ``status``.

    ``deliveries`` maps a channel to its last delivery record ("pending" when it
    has none). ``status`` sums them up: "pending" while a channel has no record,
    "failed" when one failed or was dropped, "delivered" when all are fine
    (delivered, offline or throttled), "logged" when the alert had no channel
    besides the daemon log.
    """
    alerts: dict[str, dict[str, Any]] = {}
    for line in read_json_lines(alerts_path(state_dir)):
        if not isinstance(line, dict) or "alert_id" not in line:
            continue
        kind = line.get("kind")
        if kind == "alert":
            entry = {k: v for k, v in line.items() if k != "kind"}
            entry["deliveries"] = {ch: {"status": PENDING} for ch in line.get("channels", [])}
            alerts[line["alert_id"]] = entry
        elif kind == "delivery" and line["alert_id"] in alerts:
            record = {k: v for k, v in line.items() if k not in ("kind", "alert_id", "channel")}
            alerts[line["alert_id"]]["deliveries"][line.get("channel", "?")] = record
    out = []
    for entry in alerts.values():
        if job_id is not None and entry.get("job_id") != job_id:
            continue
        entry["status"] = _overall(entry["deliveries"])
        out.append(entry)
    return out


def _overall(deliveries: dict[str, dict[str, Any]]) -> str:
    statuses = [d.get("status") for d in deliveries.values()]
    if not statuses:
        return "logged"
    if PENDING in statuses:
        return PENDING
    if any(s not in OK_STATUSES for s in statuses):
        return FAILED
    return DELIVERED
