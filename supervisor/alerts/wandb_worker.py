"""Deliver a batch of alerts to W&B: ``python -m supervisor.alerts.wandb_worker [--input FILE]``.

The ONLY place of the supervisor that imports wandb, and it runs as its own
process: wandb is heavy (~1 s to import, a service process per init) and a crash
or hang in it must never take the daemon down. The dispatcher starts it, feeds
it JSON on stdin (or ``--input FILE``) and reads ONE JSON line from stdout.

Input::

    {"wait_duration_s": 300, "deadline_s": 60, "online_init_timeout_s": 20,
     "batches": [{"target": WandbTarget.to_dict(), "alerts": [Alert.to_dict(), ...]}, ...]}

Output (the worker's stdout carries nothing else: wandb's own prints go to stderr)::

    {"ok": bool, "error": str | null, "retriable": bool,
     "timings": {"import_s": ..., "total_s": ...},
     "results": [{"run_id": ..., "ok": bool, "status": "delivered" | "offline" | "failed",
                  "mode": "online" | "offline", "run_dir": ..., "alert_ids": [...],
                  "error": str | null, "retriable": bool, "note": str | null,
                  "init_s": ..., "alert_s": ..., "finish_s": ...}, ...]}

Each batch is one ``wandb.init`` of the job's alert run (id ``<run_id>-supervisor``,
``resume="allow"``, same project, group and dir as the trainer's run), one
``run.alert`` per alert, a summary update (last event, attempt, restarts) and
``run.finish()``. Online mode falls back to offline when init fails (no API key,
no network): the alert then waits in the offline run for ``wandb sync``.
Exit status: 0 when every batch went somewhere, 1 when one failed, 2 when wandb
cannot be imported or the input is unreadable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

# Default for how long an online wandb.init may try before falling back to offline;
# never more than a third of the deadline, so the offline fallback still fits in it.
_ONLINE_INIT_TIMEOUT_S = 20.0


def main(argv: list[str] | None = None) -> int:
    """Run one batch delivery; see the module docstring for the protocol."""
    parser = argparse.ArgumentParser(
        prog="python -m supervisor.alerts.wandb_worker", description="Deliver a batch of alerts to W&B."
    )
    parser.add_argument("--input", help="read the JSON request from this file instead of stdin")
    args = parser.parse_args(argv)

    # Keep the real stdout for our one result line; everything else (wandb's
    # banners, warnings from libraries) goes to stderr, which the dispatcher logs.
    result_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    started = time.monotonic()
    try:
        text = Path(args.input).read_text() if args.input else sys.stdin.read()
        request = json.loads(text)
        batches = list(request["batches"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _emit(result_out, {"ok": False, "error": f"unreadable request: {exc}", "retriable": False,
                                  "results": [], "timings": {}}, 2)

    deadline_s = float(request.get("deadline_s") or 0)
    if deadline_s > 0:
        # The dispatcher kills us at its deadline; this covers the case where it
        # died first, so an orphaned worker never lingers.
        signal.alarm(int(deadline_s) + 5)

    try:
        import wandb  # the one wandb import of the supervisor, in this throwaway process
    except BaseException as exc:  # a broken install can raise anything, even SystemExit
        return _emit(result_out, {"ok": False, "error": f"import wandb failed: {exc!r}", "retriable": False,
                                  "results": [], "timings": {"import_s": time.monotonic() - started}}, 2)
    import_s = time.monotonic() - started

    wait_duration_s = float(request.get("wait_duration_s") or 60)
    init_timeout_s = float(request.get("online_init_timeout_s") or _ONLINE_INIT_TIMEOUT_S)
    if deadline_s > 0:
        init_timeout_s = min(init_timeout_s, max(1.0, deadline_s / 3))
    results = [_deliver_batch(wandb, batch, wait_duration_s, init_timeout_s) for batch in batches]
    ok = all(r["ok"] for r in results)
    summary = {
        "ok": ok,
        "error": None if ok else "; ".join(r["error"] or "?" for r in results if not r["ok"]),
        "retriable": any(r["retriable"] for r in results if not r["ok"]),
        "results": results,
        "timings": {"import_s": round(import_s, 3), "total_s": round(time.monotonic() - started, 3)},
    }
    return _emit(result_out, summary, 0 if ok else 1)


def _deliver_batch(wandb: Any, batch: dict[str, Any], wait_duration_s: float, init_timeout_s: float) -> dict[str, Any]:
    """One init / alerts / finish cycle for one job's alert run."""
    target = batch["target"]
    alerts = batch["alerts"]
    run_id = f"{target['run_id']}-supervisor"
    result: dict[str, Any] = {
        "run_id": run_id,
        "ok": False,
        "status": "failed",
        "mode": None,
        "run_dir": None,
        "alert_ids": [a["alert_id"] for a in alerts],
        "error": None,
        "retriable": True,
        "note": None,
    }
    mode = target.get("mode") or "offline"
    try:
        Path(target["dir"]).mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            run = _init(wandb, target, alerts, run_id, mode, init_timeout_s)
        except Exception as exc:
            if mode != "online":
                raise
            # No API key or no network: keep the alert in an offline run so
            # `wandb sync` delivers it later, rather than losing it.
            result["note"] = f"online init failed ({_one_line(exc)}); wrote offline instead"
            mode = "offline"
            # The failed online run still holds the run id inside wandb's service
            # ("run ID is in use"): tear the service down before the offline init.
            wandb.teardown()
            run = _init(wandb, target, alerts, run_id, mode, init_timeout_s)
        t1 = time.monotonic()
        for alert in alerts:
            run.alert(title=alert["title"], text=alert["text"], level=alert["level"], wait_duration=wait_duration_s)
        run.summary.update(_summary(alerts))
        t2 = time.monotonic()
        run_dir = str(Path(run.dir).parent)  # run.dir is <run_dir>/files
        run.finish()
        t3 = time.monotonic()
        result.update(
            ok=True,
            status="delivered" if mode == "online" else "offline",
            mode=mode,
            run_dir=run_dir,
            retriable=False,
            init_s=round(t1 - t0, 3),
            alert_s=round(t2 - t1, 3),
            finish_s=round(t3 - t2, 3),
        )
    except Exception as exc:
        result.update(error=_one_line(exc), mode=mode)
    return result


def _init(
    wandb: Any, target: dict[str, Any], alerts: list[dict[str, Any]], run_id: str, mode: str, init_timeout_s: float
) -> Any:
    job_name = alerts[0]["job_name"]
    settings = wandb.Settings(
        silent=True,
        console="off",
        save_code=False,
        disable_git=True,
        disable_job_creation=True,
        x_disable_stats=True,  # no system metrics: this run lives for a second
        x_disable_meta=True,
        x_disable_machine_info=True,
        x_save_requirements=False,
        init_timeout=init_timeout_s,
    )
    return wandb.init(
        id=run_id,
        resume="allow",
        project=target["project"],
        entity=target.get("entity"),
        group=target.get("group"),
        name=f"{job_name} · supervisor",
        job_type="supervisor",
        mode=mode,
        dir=target["dir"],
        config={"job_id": alerts[0]["job_id"], "job_name": job_name, "trainer_run_id": target["run_id"]},
        settings=settings,
    )


def _summary(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """The facts of the newest alert that a dashboard shows: last event, attempt, restarts."""
    last = alerts[-1]
    summary: dict[str, Any] = {
        "last_event": last["event"],
        "last_alert": last["title"],
        "last_alert_level": last["level"],
        "last_alert_time": last["time"],
    }
    for alert in alerts:  # newest value of each count wins
        details = alert.get("details") or {}
        for key in ("attempt", "restarts", "attempts"):
            if isinstance(details.get(key), int):
                summary[key] = details[key]
    return summary


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def _emit(out: Any, result: dict[str, Any], status: int) -> int:
    out.write(json.dumps(result, default=str) + "\n")
    out.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
