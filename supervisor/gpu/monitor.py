"""The GPU health monitor: periodic readings, an Xid event thread, and the quarantine.

Two threads once started: one polls every GPU every ``poll_interval_s``, the
other blocks on NVML's event set for critical Xids. Both report through
``on_event`` (called on those threads: it should only enqueue, the daemon's
loop acts) and keep a state that ``snapshot()`` and ``allocatable()`` read.

Quarantine: a GPU that turns ``failed`` (a GPU-fault Xid, uncorrectable ECC,
pages/rows waiting for a reset, lost) is quarantined; nothing new is placed on
it. The quarantine is a JSON file (atomic writes), so it survives daemon
restarts, and is matched to a GPU by UUID (by index when the UUID is unknown).
It ends when an operator calls ``clear`` (``supervisorctl gpus clear N``), or
on its own when NVML reports the GPU healthy *after a reset*. A reset is not
visible as such in NVML; we take as evidence either

- a failing reading (lost, uncorrectable ECC, pending retirement/remap) seen
  while quarantined that later reads healthy: those conditions only go away
  with a GPU reset or reboot; or
- a new boot id since the quarantine began (a reboot resets every GPU).

A GPU quarantined only for an Xid whose readings never looked wrong stays
quarantined until an operator clears it or the node reboots.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from supervisor.gpu.backend import GpuBackend, GpuLost, GpuReading, XidEvent
from supervisor.gpu.health import DEGRADED, FAILED, HEALTHY, GpuThresholds, Health, classify, classify_xid
from supervisor.gpu.types import GpuReadError
from supervisor.jobfiles.atomic import read_json, write_json_atomic
from supervisor.processes.boot import current_boot_id

log = logging.getLogger(__name__)

Status = Literal["healthy", "degraded", "failed", "quarantined"]
_RANK = {HEALTHY: 0, DEGRADED: 1, FAILED: 2}


@dataclass(frozen=True)
class GpuEvent:
    """Something the daemon should know about one GPU.

    ``kind`` "xid": an Xid arrived (``xid`` set; ``application`` True when it is
    the job's error, not the GPU's). ``kind`` "health": the GPU's health
    changed (including a quarantine cleared after a reset). ``health`` is the
    GPU's health after the event; ``quarantined`` whether it is quarantined now.
    """

    index: int | None
    kind: Literal["xid", "health"]
    health: Health
    reason: str
    xid: int | None = None
    application: bool = False
    uuid: str | None = None
    quarantined: bool = False


@dataclass(frozen=True)
class GpuStatus:
    """One GPU as ``supervisorctl gpus`` shows it. ``health`` "quarantined" overrides the reading's health."""

    index: int
    uuid: str | None
    name: str | None
    health: Status
    reasons: list[str]
    temperature_c: float | None
    memory_used_mib: int | None
    memory_total_mib: int | None
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    quarantined_since: float | None = None
    read_errors: int = 0  # transient NVML read errors so far (retried; never a reason to quarantine)
    performance: dict[str, Any] = field(default_factory=dict)  # clocks, throttle reasons, power, PCIe link

    def as_dict(self, jobs: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
        """The ``supervisorctl gpus --json`` entry; ``jobs``: ids of the jobs the daemon placed on it."""
        return {
            "index": self.index, "uuid": self.uuid, "name": self.name, "health": self.health,
            "reasons": list(self.reasons), "jobs": list(jobs), "temperature_c": self.temperature_c,
            "memory_used_mib": self.memory_used_mib, "memory_total_mib": self.memory_total_mib,
            "processes": [{"pid": pid, "used_mib": used} for pid, used in self.processes],
            "quarantined_since": self.quarantined_since, "read_errors": self.read_errors,
            "performance": dict(self.performance),
        }


@dataclass
class _Quarantine:
    index: int
    uuid: str | None
    reason: str
    since: float
    boot_id: str
    seen_failed_reading: bool = False


@dataclass
class _GpuState:
    reading: GpuReading | None = None
    uuid: str | None = None
    name: str | None = None
    health: Health | None = None  # from readings + held Xid notes; None until first polled
    reasons: list[str] = field(default_factory=list)
    reported: Health = HEALTHY  # the last health an event announced
    xid_notes: list[tuple[float, str]] = field(default_factory=list)  # (until monotonic, reason)


class GpuMonitor:
    """Watches every GPU of ``backend``; see the module docstring."""

    def __init__(self, backend: GpuBackend, quarantine_file: Path, thresholds: GpuThresholds,
                 on_event: Callable[[GpuEvent], None], poll_interval_s: float = 5.0, *,
                 xid_wait_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.quarantine_file = Path(quarantine_file)
        self.thresholds = thresholds
        self.on_event = on_event
        self.poll_interval_s = poll_interval_s
        self.xid_wait_s = xid_wait_s
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()  # one poll at a time (thread and direct calls)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._gpus: dict[int, _GpuState] = {}
        self._quarantine: list[_Quarantine] = self._load_quarantine()
        self.read_errors: dict[int, int] = {}  # gpu index -> transient read errors (never a reason to quarantine)

    # ----------------------------------------------------------------------------------------- threads

    def start(self) -> None:
        """Poll once now (so ``allocatable`` is right at once), then start the poll and Xid threads."""
        self.poll()
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._poll_loop, name="gpu-poll", daemon=True),
            threading.Thread(target=self._xid_loop, name="gpu-xid", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop both threads and wait for them (at most about ``xid_wait_s``). Call before ``backend.close()``."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.xid_wait_s + 5.0)
            if thread.is_alive():
                log.warning("GPU monitor: thread %s did not stop in time", thread.name)
        self._threads = []

    @property
    def running(self) -> bool:
        """Whether the poll and Xid threads are both alive."""
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.poll()
            except Exception:  # a monitor thread must outlive any one bad reading
                log.exception("GPU monitor: poll failed")

    def _xid_loop(self) -> None:
        while not self._stop.is_set():
            try:
                event = self.backend.wait_xid(self.xid_wait_s)
            except Exception:
                log.exception("GPU monitor: waiting for Xid events failed")
                self._stop.wait(self.xid_wait_s)
                continue
            if event is not None and not self._stop.is_set():
                try:
                    self.handle_xid(event)
                except Exception:
                    log.exception("GPU monitor: handling %s failed", event)

    # ----------------------------------------------------------------------------------------- readings

    def poll(self) -> list[GpuEvent]:
        """Read every GPU now, update health and quarantine, emit and return the events."""
        with self._poll_lock:
            count = self.count()
            readings: dict[int, GpuReading | GpuLost] = {}
            for index in range(count):
                try:
                    readings[index] = self.backend.read(index)
                except GpuLost as lost:
                    readings[index] = lost
                except GpuReadError as failed:  # transient: keep the last health, count it, read again next poll
                    self.read_errors[index] = self.read_errors.get(index, 0) + 1
                    log.warning("GPU monitor: %s (%d so far); health unchanged", failed, self.read_errors[index])
                    continue
                except IndexError:
                    continue  # the GPU vanished between count and read
            events: list[GpuEvent] = []
            with self._lock:
                for index in [i for i in self._gpus if i >= count]:
                    del self._gpus[index]
                for index, reading in readings.items():
                    events.extend(self._update(index, reading))
        self._emit(events)
        return events

    def _update(self, index: int, reading: GpuReading | GpuLost) -> list[GpuEvent]:
        state = self._gpus.setdefault(index, _GpuState())
        health, reasons = classify(reading, state.reading, self.thresholds)
        if isinstance(reading, GpuReading):
            state.reading = reading
            state.uuid, state.name = reading.uuid, reading.name
        read_failed = health == FAILED
        now = self._clock()
        state.xid_notes = [(until, text) for until, text in state.xid_notes if until > now]
        if state.xid_notes and health == HEALTHY:
            health = DEGRADED
        reasons += [text for _, text in state.xid_notes]
        events: list[GpuEvent] = []
        record = self._record_for(index)
        if read_failed:
            if record is None:
                self._add_quarantine(index, reasons[0], seen_failed_reading=True)
            elif not record.seen_failed_reading:
                record.seen_failed_reading = True
                self._save_quarantine()
        elif record is not None and (record.seen_failed_reading or record.boot_id != current_boot_id()):
            self._remove_quarantine(index)
            events.append(self._event(index, "health", health,
                                      f"gpu {index}: {health} again after a reset; quarantine cleared"))
            state.reported = health
        elif record is not None:
            # quarantined for a fault the readings cannot see (an Xid): it stays failed until cleared
            health = FAILED
            reasons = [record.reason] + [r for r in reasons if r != record.reason]
        state.health, state.reasons = health, reasons
        if health != state.reported:
            why = "; ".join(reasons) if reasons else "no fault seen"
            events.append(self._event(index, "health", health, f"gpu {index}: {health}: {why}"))
            state.reported = health
        return events

    # ----------------------------------------------------------------------------------------- Xids

    def handle_xid(self, event: XidEvent) -> GpuEvent:
        """Act on one Xid (the Xid thread calls this): quarantine on a GPU fault; emit and return the event."""
        cls = classify_xid(event.xid)
        index = event.index
        where = f"gpu {index}" if index is not None else "gpu ?"
        text = f"{where}: xid {event.xid} ({cls.description})"
        with self._lock:
            state = self._gpus.setdefault(index, _GpuState()) if index is not None else None
            health: Health = (state.health or HEALTHY) if state is not None else HEALTHY
            if cls.kind == "gpu_fault":
                health = FAILED
                if index is not None and self._record_for(index) is None:
                    self._add_quarantine(index, f"xid {event.xid}: {cls.description}", seen_failed_reading=False)
            elif cls.kind == "degraded" and state is not None:
                note = f"xid {event.xid}: {cls.description}"
                state.xid_notes.append((self._clock() + self.thresholds.xid_degraded_hold_s, note))
                state.reasons.append(note)
                if _RANK[health] < _RANK[DEGRADED]:
                    health = DEGRADED
            if state is not None and cls.kind != "application":
                worst = max(state.health or HEALTHY, health, key=_RANK.__getitem__)
                state.health = state.reported = worst
            out = self._event(index, "xid", health, text, xid=event.xid, application=cls.application)
        self._emit([out])
        return out

    # ----------------------------------------------------------------------------------------- queries

    def count(self) -> int:
        """How many GPUs the node has (quarantined ones included)."""
        return self.backend.device_count()

    def snapshot(self) -> list[GpuStatus]:
        """Every GPU as last seen (``health`` "quarantined" for a quarantined one)."""
        out = []
        with self._lock:
            for index in range(self.count()):
                state = self._gpus.get(index, _GpuState())
                record = self._record_for(index)
                reading = state.reading
                health: Status = state.health or FAILED
                reasons = list(state.reasons) if state.health else ["not read yet"]
                if record is not None:
                    health = "quarantined"
                    reasons = [f"quarantined: {record.reason}"] + [r for r in reasons if r != record.reason]
                out.append(GpuStatus(
                    index=index, uuid=state.uuid, name=state.name, health=health, reasons=reasons,
                    temperature_c=reading.temperature_c if reading else None,
                    memory_used_mib=reading.memory_used_mib if reading else None,
                    memory_total_mib=reading.memory_total_mib if reading else None,
                    processes=[(p.pid, p.used_mib) for p in reading.processes] if reading else [],
                    quarantined_since=record.since if record else None,
                    read_errors=self.read_errors.get(index, 0),
                    performance=reading.performance() if reading else {},
                ))
        return out

    def last_reading(self, index: int) -> GpuReading | None:
        """The GPU's latest reading (None before the first, or for no such GPU); no NVML call."""
        with self._lock:
            state = self._gpus.get(index)
            return state.reading if state is not None else None

    def allocatable(self) -> list[int]:
        """GPUs a new attempt may use: read at least once, healthy or degraded, not quarantined.

        Degraded GPUs stay allocatable: heat and slowdowns are transient and
        the GPU computes correctly; refusing them would stall a one-GPU node.
        """
        with self._lock:
            return sorted(
                index for index, state in self._gpus.items()
                if state.health in (HEALTHY, DEGRADED) and self._record_for(index) is None
            )

    # ----------------------------------------------------------------------------------------- quarantine

    def quarantine(self, index: int, reason: str) -> None:
        """Quarantine GPU ``index`` by hand (persisted). Only ``clear`` or a reboot ends it."""
        with self._lock:
            if self._record_for(index) is None:
                self._add_quarantine(index, reason, seen_failed_reading=False)

    def clear(self, index: int) -> bool:
        """End the quarantine of GPU ``index`` (operator action). ``False`` when it was not quarantined.

        Held Xid notes go too; if the GPU still reads as failed, the next poll
        quarantines it again.
        """
        with self._lock:
            removed = self._remove_quarantine(index)
            state = self._gpus.get(index)
            if state is not None:
                state.xid_notes = []
                if state.health == FAILED and removed:
                    # the fault that quarantined it is forgiven until the next reading says otherwise
                    state.health, state.reasons, state.reported = HEALTHY, [], HEALTHY
        return removed

    def quarantined(self) -> dict[int, str]:
        """Index -> reason of every quarantined GPU."""
        with self._lock:
            return {index: rec.reason for index in range(self.count())
                    if (rec := self._record_for(index)) is not None}

    def _record_for(self, index: int) -> _Quarantine | None:
        state = self._gpus.get(index)
        uuid = state.uuid if state is not None else None
        if uuid is not None:
            for rec in self._quarantine:
                if rec.uuid == uuid:
                    return rec
        for rec in self._quarantine:
            # a record whose GPU's UUID we know belongs to that GPU wherever it is now
            if rec.index == index and (rec.uuid is None or uuid is None):
                return rec
        return None

    def _add_quarantine(self, index: int, reason: str, *, seen_failed_reading: bool) -> None:
        state = self._gpus.get(index)
        self._quarantine.append(_Quarantine(
            index=index, uuid=state.uuid if state is not None else None, reason=reason, since=self._wall(),
            boot_id=current_boot_id(), seen_failed_reading=seen_failed_reading,
        ))
        log.warning("gpu %d quarantined: %s", index, reason)
        self._save_quarantine()

    def _remove_quarantine(self, index: int) -> bool:
        removed = False
        while (rec := self._record_for(index)) is not None:
            self._quarantine.remove(rec)
            removed = True
        if removed:
            log.warning("gpu %d: quarantine cleared", index)
            self._save_quarantine()
        return removed

    def _load_quarantine(self) -> list[_Quarantine]:
        if not self.quarantine_file.exists():
            return []
        data = read_json(self.quarantine_file)
        records = data.get("quarantined") if isinstance(data, dict) else None
        if not isinstance(records, list):
            log.error("%s: unreadable; starting with no GPU quarantined", self.quarantine_file)
            return []
        out = []
        for raw in records:
            try:
                out.append(_Quarantine(
                    index=int(raw["index"]), uuid=raw.get("uuid"), reason=str(raw.get("reason", "")),
                    since=float(raw.get("since", 0.0)), boot_id=str(raw.get("boot_id", "")),
                    seen_failed_reading=bool(raw.get("seen_failed_reading", False)),
                ))
            except (KeyError, TypeError, ValueError):
                log.error("%s: quarantined: skipping a malformed record %r", self.quarantine_file, raw)
        return out

    def _save_quarantine(self) -> None:
        self.quarantine_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.quarantine_file, {"version": 1, "quarantined": [
            {"index": r.index, "uuid": r.uuid, "reason": r.reason, "since": r.since, "boot_id": r.boot_id,
             "seen_failed_reading": r.seen_failed_reading} for r in self._quarantine
        ]})

    # ----------------------------------------------------------------------------------------- events

    def _event(self, index: int | None, kind: Literal["xid", "health"], health: Health, reason: str, *,
               xid: int | None = None, application: bool = False) -> GpuEvent:
        state = self._gpus.get(index) if index is not None else None
        return GpuEvent(index=index, kind=kind, health=health, reason=reason, xid=xid, application=application,
                        uuid=state.uuid if state else None,
                        quarantined=index is not None and self._record_for(index) is not None)

    def _emit(self, events: list[GpuEvent]) -> None:
        for event in events:
            log.log(logging.INFO if event.health == HEALTHY or event.application else logging.WARNING,
                    "%s", event.reason)
            try:
                self.on_event(event)
            except Exception:  # the daemon's handler must not kill a monitor thread
                log.exception("GPU monitor: on_event failed for %s", event)
