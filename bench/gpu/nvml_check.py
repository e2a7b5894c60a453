"""Exercise the REAL NVML backend on a GPU node and print what it saw (part of bench/gpu/check.sh).

    python bench/gpu/nvml_check.py

1. ``NvmlBackend`` starts (``nvmlInit``) and reads every GPU: name, UUID,
   temperature, clock-event reasons, ECC counts, retirement/remap state,
   memory, compute processes; each reading is classified.
2. A ``GpuMonitor`` starts its poll and Xid threads (the Xid thread blocks in
   ``nvmlEventSetWait_v2``), runs for a few seconds, and must stop promptly.
3. ``wait_xid`` honours its timeout; pre-flight lists what holds each GPU.

Exit status 0 when every check passed, 1 when one failed, 2 when NVML is unusable.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from supervisor.gpu import GpuBackendError, GpuEvent, GpuMonitor, GpuThresholds, NvmlBackend, classify, preflight

XID_WAIT_S = 1.0
RUN_S = 3.0


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="  log: %(levelname)s %(name)s: %(message)s")
    if os.environ.pop("ML_SUPERVISOR_NVML", None):
        print("note: ML_SUPERVISOR_NVML ignored: this check uses the real NVML")
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            failures.append(what)

    print("== 1. NVML readings")
    try:
        backend = NvmlBackend()
    except GpuBackendError as exc:
        print(f"FAIL: {exc}")
        return 2
    count = backend.device_count()
    check(count > 0, f"NVML sees {count} GPU(s)")
    thresholds = GpuThresholds()
    for index in range(count):
        reading = backend.read(index)
        health, reasons = classify(reading, None, thresholds)
        print(f"  gpu {index}: {reading.name} {reading.uuid}")
        print(f"    temperature {reading.temperature_c} C, memory {reading.memory_used_mib}/"
              f"{reading.memory_total_mib} MiB, clocks events {sorted(reading.throttle_reasons or [])}")
        print(f"    ECC volatile uncorrected {reading.ecc_uncorrected} corrected {reading.ecc_corrected}, "
              f"retired pages pending {reading.retired_pages_pending}, remapped rows pending "
              f"{reading.remapped_rows_pending} failure {reading.remapped_rows_failure}")
        print(f"    compute processes {[(p.pid, p.used_mib) for p in reading.processes]}")
        print(f"    health {health} {reasons}")
        check(reading.uuid.startswith(("GPU-", "MIG-")), f"gpu {index}: a UUID")
        check(bool(reading.memory_total_mib), f"gpu {index}: memory total read")
        check(reading.temperature_c is not None, f"gpu {index}: temperature read")

    print("== 2. monitor threads (poll + Xid event set)")
    events: list[GpuEvent] = []
    with tempfile.TemporaryDirectory() as tmp:
        monitor = GpuMonitor(backend, Path(tmp) / "gpu-quarantine.json", thresholds, events.append,
                             poll_interval_s=0.5, xid_wait_s=XID_WAIT_S)
        started = time.monotonic()
        monitor.start()
        print(f"  started in {time.monotonic() - started:.2f}s")
        time.sleep(RUN_S)
        check(monitor.running, f"both threads alive after {RUN_S:.0f}s")
        stopping = time.monotonic()
        monitor.stop()
        stop_s = time.monotonic() - stopping
        check(not monitor.running and stop_s < XID_WAIT_S + 1.5, f"stopped cleanly in {stop_s:.2f}s")
        for status in monitor.snapshot():
            print(f"  snapshot: {status.as_dict()}")
        print(f"  allocatable: {monitor.allocatable()}; events: {[e.reason for e in events]}")

    print("== 3. wait_xid timeout and pre-flight")
    waited = time.monotonic()
    event = backend.wait_xid(0.5)
    waited = time.monotonic() - waited
    print(f"  wait_xid(0.5) -> {event} after {waited:.2f}s")
    check(event is not None or 0.3 <= waited < 2.0, "wait_xid honours its timeout")
    result = preflight(list(range(count)), backend, set(), kill_own=False, wait_s=0.0)
    print(f"  preflight on every GPU (nothing killed): ok={result.ok} {result.reasons}")
    backend.close()

    print(f"== NVML check: {'PASS' if not failures else 'FAIL: ' + '; '.join(failures)}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
