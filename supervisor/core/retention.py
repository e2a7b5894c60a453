"""Retention: what ``supervisorctl prune`` removes, and the daemon's own prune every ``retention.interval``.

A prune is planned first (``plan_prune``: read-only, any thread: the store and a listing of each finished
job's directory), then applied (``apply_prune``) from a thread that is not the loop: the store's rows change
on the loop thread (``call``), the files go from the calling thread. A dry run is the plan alone, and a real
run removes exactly what its plan lists (a job restarted, or one whose lock a process still holds, between the
two is left alone and reported as skipped).

What stays of a pruned job, unless asked otherwise: its best checkpoint (and ``best.ckpt``), its frozen config
and its manifest (with a ``remove`` line for each checkpoint that went, so ``live_checkpoints`` stays true),
and every W&B offline run never synced (listed with its ``wandb sync`` command). Its row then stays, marked
``pruned_at`` (a restart is refused); with nothing to keep, the row and the directory go. Never a job that has
not finished.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from supervisor.config.durations import format_duration
from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.deadline import guarded
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import CheckpointEntry, live_in, record_remove
from supervisor.jobfiles.safe_read import list_dir, lstat
from supervisor.processes.control import try_lock
from supervisor.settings import RetentionConfig, retention_seconds
from supervisor.store import JobRow, Store

log = logging.getLogger("ml_supervisor")
T = TypeVar("T")

BATCH = 2000  # events or alerts deleted per transaction (the loop waits for one batch at most)
# What stays of a pruned job besides its best checkpoint and its manifest: its frozen config, and its lock (the
# prune holds it while it removes, so no attempt of the job can start meanwhile).
KEPT_FILES = ("config.yaml", "job.lock")
OFFLINE_RUN = "offline-run-"

# Runs ``fn(*args)`` on the loop thread (``Supervisor.call``: positional arguments only): every write to the
# store goes through it.
LoopCall = Callable[..., Any]


@dataclass(frozen=True)
class PruneRules:
    """Cutoffs as points in time: a job that ended before ``jobs_before`` goes, ... (None: kept for ever)."""

    jobs_before: float | None = None
    checkpoints_before: float | None = None
    events_before: float | None = None
    alerts_before: float | None = None
    keep_best: bool = True
    keep_unsynced_wandb: bool = True

    @property
    def any(self) -> bool:
        return any(t is not None for t in (self.jobs_before, self.checkpoints_before, self.events_before,
                                           self.alerts_before))

    def describe(self, now: float) -> str:
        """``jobs ended over 90d ago, checkpoints other than the best over 7d, ...`` (for the log)."""
        parts = [f"{what} over {format_duration(now - before)}" for what, before in (
            ("finished jobs", self.jobs_before), ("their non-best checkpoints", self.checkpoints_before),
            ("events", self.events_before), ("delivered alerts", self.alerts_before)) if before is not None]
        return ", ".join(parts) or "nothing"


def rules_from(retention: RetentionConfig, now: float, *, jobs: float | None = None,
               checkpoints: float | None = None, events: float | None = None, alerts: float | None = None,
               include_best: bool = False, include_wandb: bool = False) -> PruneRules:
    """The rules of one prune: ages in seconds given by the caller (``prune --older-than``), else the daemon's
    ``retention`` settings; events and alerts follow ``jobs`` when neither names them."""
    def age(given: float | None, setting: Any, fallback: float | None = None) -> float | None:
        if given is not None:
            return given
        configured = retention_seconds(setting)
        return configured if configured is not None else fallback

    jobs_age = age(jobs, retention.jobs)
    ages = (jobs_age, age(checkpoints, retention.checkpoints), age(events, retention.events, jobs),
            age(alerts, retention.alerts, jobs))
    before = [None if a is None else now - a for a in ages]
    return PruneRules(jobs_before=before[0], checkpoints_before=before[1], events_before=before[2],
                      alerts_before=before[3], keep_best=retention.keep_best and not include_best,
                      keep_unsynced_wandb=retention.keep_unsynced_wandb and not include_wandb)


@dataclass
class JobPrune:
    """What a prune removes of one finished job (``what``: the ``job``, or only its non-best ``checkpoints``)."""

    job: str
    name: str
    state: str
    ended_at: float | None
    job_dir: str
    what: str
    remove: list[str] = field(default_factory=list)  # each removed whole (a directory with what it holds)
    bytes: int = 0
    keep: list[str] = field(default_factory=list)
    best: str | None = None  # the best checkpoint, kept
    wandb_unsynced: list[str] = field(default_factory=list)  # offline runs never synced: `wandb sync` them
    removed_checkpoints: list[str] = field(default_factory=list)  # live ones: a manifest `remove` line each
    row: str = "unchanged"  # "deleted" (nothing kept), "kept" (marked pruned) or "unchanged" (checkpoints only)
    attempts: int = 0
    events: int = 0
    alerts: int = 0
    skipped: str | None = None  # why the real run left it (set by apply_prune)


@dataclass
class PrunePlan:
    """A prune: the jobs it touches, the events and delivered alerts it deletes besides theirs."""

    now: float
    rules: PruneRules
    jobs: list[JobPrune]
    events: int = 0
    alerts: int = 0
    dry_run: bool = True

    def as_dict(self) -> dict[str, Any]:
        done = [j for j in self.jobs if j.skipped is None]
        return {
            "dry_run": self.dry_run, "now": self.now, "rules": asdict(self.rules),
            "jobs": [asdict(j) for j in self.jobs],
            "totals": {"jobs": sum(1 for j in done if j.what == "job"),
                       "checkpoint_only": sum(1 for j in done if j.what == "checkpoints"),
                       "bytes": sum(j.bytes for j in done), "events": self.events + sum(j.events for j in done),
                       "alerts": self.alerts + sum(j.alerts for j in done),
                       "skipped": sum(1 for j in self.jobs if j.skipped is not None),
                       "wandb_unsynced": sum(len(j.wandb_unsynced) for j in self.jobs)},
        }


# -- planning (read-only) -------------------------------------------------------------------------------------
def plan_prune(store: Store, rules: PruneRules, now: float) -> PrunePlan:
    """What a prune with ``rules`` removes now: read from the store and the finished jobs' directories."""
    cuts = [t for t in (rules.jobs_before, rules.checkpoints_before) if t is not None]
    jobs: list[JobPrune] = []
    if cuts:
        for row in store.finished_jobs(limit=None, before=max(cuts)).jobs:
            item = _plan_job(store, row, rules)
            if item is not None:
                jobs.append(item)
    events, alerts = store.count_prunable(events_before=rules.events_before, alerts_before=rules.alerts_before,
                                          excluding=[j.job for j in jobs if j.what == "job" and j.skipped is None])
    return PrunePlan(now=now, rules=rules, jobs=jobs, events=events, alerts=alerts)


def _plan_job(store: Store, job: JobRow, rules: PruneRules) -> JobPrune | None:
    ended = job.ended_at if job.ended_at is not None else 0.0
    if rules.jobs_before is not None and ended < rules.jobs_before:
        return _plan_whole(store, job, rules)
    if rules.checkpoints_before is not None and ended < rules.checkpoints_before and job.pruned_at is None:
        return _plan_checkpoints(job)
    return None


def _item(job: JobRow, what: str) -> JobPrune:
    return JobPrune(job=job.id, name=job.name, state=job.state.value, ended_at=job.ended_at, job_dir=job.job_dir,
                    what=what)


def _plan_whole(store: Store, job: JobRow, rules: PruneRules) -> JobPrune | None:
    item = _item(job, "job")
    root = Path(job.job_dir)
    layout = JobLayout(root)
    names = _names(root)
    best = _best_file(job, layout) if rules.keep_best else None
    unsynced = _unsynced_wandb_runs(layout) if rules.keep_unsynced_wandb else []
    attempts, events, alerts, owed = store.job_row_counts(job.id)
    if owed:
        item.skipped = "an alert is still owed for it (the daemon sends it first)"
        return item
    item.attempts, item.events, item.alerts = attempts, events, alerts
    item.best, item.wandb_unsynced = best, unsynced
    if best is None and not unsynced:
        item.row = "deleted"
        if names is not None:
            item.remove = [str(root)]
    else:
        item.row = "kept"
        kept = {*KEPT_FILES, layout.checkpoints.name}
        if best is not None:
            kept.add("best.ckpt")
        if unsynced:
            kept.add(layout.wandb_dir.name)
        item.remove = [str(root / n) for n in sorted(names or []) if n not in kept]
        item.remove += _checkpoint_files(layout, keep=best)
        item.removed_checkpoints = _live_removed(layout, item.remove)
        item.keep = [str(root / n) for n in sorted(kept) if names is not None and n in names]
        if best is not None:
            item.keep.append(best)
        if job.pruned_at is not None and not item.remove:
            return None  # pruned before, nothing left to take
    item.bytes = sum(_size(Path(p)) for p in item.remove)
    return item


def _plan_checkpoints(job: JobRow) -> JobPrune | None:
    item = _item(job, "checkpoints")
    layout = JobLayout(Path(job.job_dir))
    best = _best_file(job, layout)
    item.best = best
    item.remove = _checkpoint_files(layout, keep=best)
    if not item.remove:
        return None
    item.removed_checkpoints = _live_removed(layout, item.remove)
    item.keep = [p for p in (str(layout.manifest), best) if p is not None]
    item.bytes = sum(_size(Path(p)) for p in item.remove)
    return item


def _names(path: Path) -> list[str] | None:
    return _quiet(lambda: list_dir(path), None)


def _best_file(job: JobRow, layout: JobLayout) -> str | None:
    """The job's best checkpoint when it is a file in its checkpoint directory (the only place prune touches)."""
    best = job.best_checkpoint
    if not best or Path(best).parent != layout.checkpoints:
        return None
    info = _quiet(lambda: lstat(best), None)
    return best if info is not None and stat.S_ISREG(info.st_mode) else None


def _checkpoint_files(layout: JobLayout, *, keep: str | None) -> list[str]:
    """Everything in the checkpoint directory but the manifest and ``keep`` (abandoned ones included)."""
    names = _names(layout.checkpoints) or []
    spared = {layout.manifest.name, Path(keep).name if keep else None}
    return [str(layout.checkpoints / n) for n in sorted(names) if n not in spared]


def _live_removed(layout: JobLayout, removed: list[str]) -> list[str]:
    """The live checkpoints (as the manifest says) among ``removed``: each gets a ``remove`` line."""
    going = set(removed)
    none: list[CheckpointEntry] = []
    live = _quiet(lambda: live_in(read_json_lines(layout.manifest)), none)
    return [e.path for e in live if e.path in going]


def _unsynced_wandb_runs(layout: JobLayout) -> list[str]:
    """The job's W&B offline runs that ``wandb sync`` never uploaded (no ``run-*.wandb.synced`` beside the
    run file), in the job's W&B directory (``<job>/wandb/wandb/offline-run-*``)."""
    runs = layout.wandb_dir / "wandb"
    found = []
    for name in sorted(_names(runs) or []):
        if not name.startswith(OFFLINE_RUN):
            continue
        inside = _names(runs / name) or []
        if not any(n.endswith(".wandb.synced") for n in inside):
            found.append(str(runs / name))
    return found


def _size(path: Path) -> int:
    """Bytes under ``path`` (links not followed; what a listing does not show is not counted)."""
    info = _quiet(lambda: lstat(path), None)
    if info is None:
        return 0
    if not stat.S_ISDIR(info.st_mode):
        return info.st_blocks * 512 if info.st_blocks else info.st_size
    return sum(_size(path / n) for n in _names(path) or [])


def _quiet(read: Callable[[], T], default: T) -> T:
    """What ``read`` returns, or ``default`` when the file does not answer (``FileStalled``) or is unreadable."""
    try:
        return read()
    except OSError:
        return default


# -- applying (not on the loop thread) ------------------------------------------------------------------------
def apply_prune(plan: PrunePlan, store: Store, call: LoopCall) -> PrunePlan:
    """Remove what ``plan`` lists: each job's files and rows, then the events and delivered alerts; the plan,
    as done (``dry_run`` false; a job left alone says why in ``skipped``)."""
    plan.dry_run = False
    for item in plan.jobs:
        if item.skipped is None:
            item.skipped = _apply_job(item, store, call, plan.now)
    plan.alerts = 0
    if plan.rules.alerts_before is not None:
        while (n := call(partial(store.prune_alerts, plan.rules.alerts_before, batch=BATCH))) > 0:
            plan.alerts += n
    plan.events = 0
    if plan.rules.events_before is not None:
        while True:
            events, alerts = call(partial(store.prune_events, plan.rules.events_before, batch=BATCH))
            plan.events += events
            plan.alerts += alerts
            if events == 0:
                break
    return plan


def _apply_job(item: JobPrune, store: Store, call: LoopCall, now: float) -> str | None:
    """Prune one job; why it was left alone (None: done)."""
    layout = JobLayout(Path(item.job_dir))
    lock = _job_lock(layout)
    if lock is False:
        return "a process of the job still holds its lock"
    try:
        if item.what == "job":
            # First the mark: from here on a restart is refused, so no attempt starts among files that go.
            if not call(partial(store.mark_pruned, item.job, ended_at=item.ended_at, now=now)):
                return "it was restarted since (or is gone)"
        elif not call(_still_finished, store, item.job, item.ended_at):
            return "it was restarted since (or is gone)"
        for path in item.removed_checkpoints:
            _quiet(lambda p=path: record_remove(layout.manifest, p, 0), None)  # type: ignore[misc]
        failed = _remove_all(item.remove, key=item.job_dir)
        if failed:
            return f"{failed} (the next prune finishes it)"
        if item.what == "job":
            counts = call(partial(store.prune_job, item.job, ended_at=item.ended_at, now=now,
                                  keep_row=item.row == "kept"))
            if counts is None:
                return "an alert became owed for it (its files are gone; the next prune removes its rows)"
            item.attempts, item.events, item.alerts = counts.attempts, counts.events, counts.alerts
        return None
    finally:
        if isinstance(lock, int):
            os.close(lock)


def _still_finished(store: Store, job_id: str, ended_at: float | None) -> bool:
    """(loop thread) Whether the job is still finished as planned."""
    try:
        job = store.get_job(job_id)
    except Exception:
        return False
    return job.state.terminal and job.ended_at == ended_at


def _job_lock(layout: JobLayout) -> int | bool | None:
    """The job's lock, taken (an attempt's monitor holds it while any process of the job lives, and a launch
    takes it first): its fd, False when held elsewhere, None when the job has no directory any more."""
    info = _quiet(lambda: lstat(layout.root), None)
    if info is None or not stat.S_ISDIR(info.st_mode):
        return None
    try:
        fd = try_lock(layout.lock)
    except OSError:
        return None
    return False if fd is None else fd


def _remove_all(paths: list[str], *, key: str) -> str | None:
    """Remove each path (a directory with everything under it; a link is removed, never followed), under the
    deadline of the job's directory; what failed, or None."""
    for path in paths:
        try:
            guarded(path, lambda p=path: _remove(p), key=key)  # type: ignore[misc]
        except OSError as exc:
            return f"cannot remove {path}: {exc.strerror or exc}"
    return None


def _remove(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)  # fd-based on Linux: a link planted inside is removed, not followed
    else:
        os.unlink(path)


# -- the daemon's own prune ---------------------------------------------------------------------------------
class RetentionKeeper:
    """Prunes by the ``retention`` settings every ``interval`` from a thread of its own (nothing set: it says
    that everything is kept, once, and never runs)."""

    def __init__(self, retention: RetentionConfig, store: Store, call: LoopCall, clock: Callable[[], float]
                 ) -> None:
        self._retention = retention
        self._store = store
        self._call = call
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        rules = rules_from(self._retention, self._clock())
        if not rules.any:
            log.info("retention: keeping every finished job, its checkpoints, events and delivered alerts "
                     "(retention.* unset; `supervisorctl prune --older-than 90d` removes old ones)")
            return
        log.info("retention: pruning %s, every %s", rules.describe(self._clock()),
                 format_duration(retention_seconds(self._retention.interval) or 3600))
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> PrunePlan:
        now = self._clock()
        plan = plan_prune(self._store, rules_from(self._retention, now), now)
        done = apply_prune(plan, self._store, self._call)
        totals = done.as_dict()["totals"]
        if any(totals[k] for k in ("jobs", "checkpoint_only", "events", "alerts")):
            log.info("retention: pruned %d jobs, the checkpoints of %d, %d events, %d alerts (%.1f MB)",
                     totals["jobs"], totals["checkpoint_only"], totals["events"], totals["alerts"],
                     totals["bytes"] / 1e6)
        return done

    def _run(self) -> None:
        interval = retention_seconds(self._retention.interval) or 3600.0
        wait = min(60.0, interval)  # the first prune a minute after start (reconcile is done by then)
        while not self._stop.wait(wait):
            try:
                self.run_once()
            except Exception:  # pruning must never take supervision down
                log.exception("retention: the prune failed; trying again in %s", format_duration(interval))
            wait = interval
