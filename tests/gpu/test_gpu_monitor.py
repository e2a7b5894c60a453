"""The GPU monitor through the simulated NVML: every health path, the Xid thread, the quarantine."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from supervisor.gpu.allocate import allocate, cuda_environment
from supervisor.gpu.health import GpuThresholds
from supervisor.gpu.monitor import GpuEvent, GpuMonitor

from .conftest import FakeGpuFile


class Recorder:
    """Collects the monitor's events; ``wait_for`` blocks (briefly) until one matches."""

    def __init__(self) -> None:
        self.events: list[GpuEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: GpuEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, kind: str, timeout_s: float = 5.0) -> GpuEvent:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = [e for e in self.events if e.kind == kind]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {kind} event within {timeout_s}s; got {self.events}")
                self._cond.wait(left)


@pytest.fixture
def boot_id(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ML_SUPERVISOR_BOOT_ID", "boot-1")
    return "boot-1"


def make_monitor(gpu_file: FakeGpuFile, tmp_path: Path, recorder: Recorder | None = None,
                 thresholds: GpuThresholds | None = None, **kwargs: object) -> GpuMonitor:
    return GpuMonitor(gpu_file.backend(), tmp_path / "state" / "gpu-quarantine.json", thresholds or GpuThresholds(),
                      recorder if recorder is not None else Recorder(), poll_interval_s=3600.0, **kwargs)


def by_index(monitor: GpuMonitor) -> dict[int, tuple[str, list[str]]]:
    return {s.index: (s.health, s.reasons) for s in monitor.snapshot()}


def test_healthy_node(gpu_file: FakeGpuFile, tmp_path: Path, boot_id: str) -> None:
    recorder = Recorder()
    monitor = make_monitor(gpu_file, tmp_path, recorder)
    assert monitor.poll() == []
    assert recorder.events == []
    assert monitor.count() == 2
    assert monitor.allocatable() == [0, 1]
    assert by_index(monitor) == {0: ("healthy", []), 1: ("healthy", [])}


def test_thermal_slowdown_is_degraded_and_still_allocatable(gpu_file: FakeGpuFile, tmp_path: Path,
                                                            boot_id: str) -> None:
    monitor = make_monitor(gpu_file, tmp_path)
    monitor.poll()
    gpu_file.set(0, temperature_c=91, throttle_reasons=["hw_thermal_slowdown"])
    [event] = monitor.poll()
    assert (event.index, event.kind, event.health, event.quarantined) == (0, "health", "degraded", False)
    assert event.reason == "gpu 0: degraded: temperature 91 C >= 85 C; clocks slowed: hw_thermal_slowdown"
    assert monitor.allocatable() == [0, 1]
    assert monitor.poll() == []  # no repeat while nothing changes
    gpu_file.set(0, temperature_c=60, throttle_reasons=[])
    [event] = monitor.poll()
    assert (event.health, event.reason) == ("healthy", "gpu 0: healthy: no fault seen")


@pytest.mark.parametrize(("fields", "reason"), [
    ({"ecc_uncorrected": 2}, "uncorrectable ECC errors: 2"),
    ({"retired_pages_pending": True}, "retired pages pending (a reset is needed to retire them)"),
    ({"remapped_rows_pending": True}, "row remapping pending (a reset is needed to remap)"),
    ({"lost": True}, "GPU is lost"),
])
def test_failed_reading_quarantines(gpu_file: FakeGpuFile, tmp_path: Path, boot_id: str,
                                    fields: dict[str, object], reason: str) -> None:
    recorder = Recorder()
    monitor = make_monitor(gpu_file, tmp_path, recorder)
    monitor.poll()
    gpu_file.set(1, **fields)
    [event] = monitor.poll()
    assert (event.index, event.kind, event.health, event.quarantined) == (1, "health", "failed", True)
    assert event.reason == f"gpu 1: failed: {reason}"
    assert recorder.events == [event]
    assert monitor.allocatable() == [0]
    assert by_index(monitor)[1] == ("quarantined", [f"quarantined: {reason}"])
    assert monitor.quarantined() == {1: reason}
    saved = json.loads((tmp_path / "state" / "gpu-quarantine.json").read_text())
    assert [(r["index"], r["reason"], r["boot_id"]) for r in saved["quarantined"]] == [(1, reason, boot_id)]
    assert monitor.poll() == []  # still failed: no new event


def test_healthy_after_a_reset_clears_the_quarantine(gpu_file: FakeGpuFile, tmp_path: Path, boot_id: str) -> None:
    monitor = make_monitor(gpu_file, tmp_path)
    monitor.poll()
    gpu_file.set(0, lost=True)
    monitor.poll()
    assert monitor.allocatable() == [1]
    gpu_file.set(0, lost=False)  # the operator reset it; NVML reads it again, with no fault
    [event] = monitor.poll()
    assert (event.index, event.health, event.quarantined) == (0, "healthy", False)
    assert event.reason == "gpu 0: healthy again after a reset; quarantine cleared"
    assert monitor.allocatable() == [0, 1]
    assert monitor.quarantined() == {}


def test_xid_79_through_the_event_thread(gpu_file: FakeGpuFile, tmp_path: Path, boot_id: str) -> None:
    recorder = Recorder()
    monitor = make_monitor(gpu_file, tmp_path, recorder, xid_wait_s=0.05)
    assert not monitor.running
    monitor.start()
    try:
        assert monitor.running
        gpu_file.add_xid(1, 79)
        event = recorder.wait_for("xid")
        assert (event.index, event.xid, event.health, event.application, event.quarantined) == \
            (1, 79, "failed", False, True)
        assert event.reason == "gpu 1: xid 79 (GPU has fallen off the bus)"
        assert monitor.allocatable() == [0]
        assert by_index(monitor)[1][0] == "quarantined"
        time.sleep(0.2)  # several more waits of the Xid thread: the Xid is not delivered twice
        assert [e.xid for e in recorder.events if e.kind == "xid"] == [79]
    finally:
        monitor.stop()  # returns (the test's timeout would say if it did not), the threads gone
        assert not monitor.running


def test_poll_thread_polls_on_its_own(gpu_file: FakeGpuFile, tmp_path: Path, boot_id: str) -> None:
    recorder = Recorder()
    monitor = GpuMonitor(gpu_file.backend(), tmp_path / "q.json", GpuThresholds(), recorder,
                         poll_interval_s=0.02, xid_wait_s=0.05)
    monitor.start()
    try:
        gpu_file.set(0, ecc_uncorrected=1)
        event = recorder.wait_for("health")
        assert (event.index, event.health) == (0, "failed")
    finally:
        monitor.stop()


def test_application_xid_is_the_jobs_error(gpu_file: FakeGpuFile, tmp_path: Path, boot_id: str) -> None:
    recorder = Recorder()
    monitor = make_monitor(gpu_file, tmp_path, recorder, xid_wait_s=0.05)
    monitor.start()
    try:
        gpu_file.add_xid(0, 13)
        event = recorder.wait_for("xid")
    finally:
        monitor.stop()
    assert (event.index, event.xid, event.application, event.health, event.quarantined) == \
        (0, 13, True, "healthy", False)
    assert event.reason == "gpu 0: xid 13 (graphics engine exception)"
    assert monitor.allocatable() == [0, 1]
    assert monitor.poll() == []


def test_degraded_xid_is_held_for_a_while(gpu_file: FakeGpuFile, tmp_path: Path, boot_id: str) -> None:
    now = [1000.0]
    monitor = make_monitor(gpu_file, tmp_path, thresholds=GpuThresholds(xid_degraded_hold_s=60.0),
                           clock=lambda: now[0])
    monitor.poll()
    backend = monitor.backend
    gpu_file.add_xid(0, 92)
    xid = backend.wait_xid(1.0)
    assert xid is not None
    event = monitor.handle_xid(xid)
    assert (event.health, event.application) == ("degraded", False)
    assert monitor.poll() == []
    assert by_index(monitor)[0] == ("degraded", ["xid 92: high single-bit ECC error rate"])
    now[0] += 61.0
    [event] = monitor.poll()
    assert (event.index, event.health) == (0, "healthy")


def test_quarantine_survives_a_new_monitor(gpu_file: FakeGpuFile, tmp_path: Path, boot_id: str) -> None:
    first = make_monitor(gpu_file, tmp_path)
    first.poll()
    gpu_file.add_xid(0, 119)
    xid = first.backend.wait_xid(1.0)
    assert xid is not None
    first.handle_xid(xid)
    assert first.poll() == []  # the readings look fine, but an Xid quarantine holds: no "healthy" event
    assert by_index(first)[0][0] == "quarantined"
    # a daemon restart: new backend, new monitor, same quarantine file; the GPU reads fine
    second = make_monitor(gpu_file, tmp_path)
    second.poll()
    assert second.allocatable() == [1]
    assert by_index(second)[0] == ("quarantined", ["quarantined: xid 119: GSP RPC timeout"])
    assert second.poll() == []


def test_operator_clear(gpu_file: FakeGpuFile, tmp_path: Path, boot_id: str) -> None:
    recorder = Recorder()
    monitor = make_monitor(gpu_file, tmp_path, recorder)
    monitor.poll()
    monitor.quarantine(1, "operator: flaky fan")
    assert monitor.allocatable() == [0]
    assert monitor.clear(1) is True
    assert monitor.clear(1) is False
    assert monitor.allocatable() == [0, 1]
    assert json.loads((tmp_path / "state" / "gpu-quarantine.json").read_text())["quarantined"] == []
    # a GPU that still reads as failed is quarantined again at the next poll
    gpu_file.set(0, ecc_uncorrected=4)
    monitor.poll()
    assert monitor.clear(0) is True
    assert monitor.allocatable() == [0, 1]
    [event] = monitor.poll()
    assert (event.index, event.health, event.quarantined) == (0, "failed", True)


def test_a_reboot_clears_an_xid_quarantine(gpu_file: FakeGpuFile, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ML_SUPERVISOR_BOOT_ID", "boot-1")
    monitor = make_monitor(gpu_file, tmp_path)
    monitor.poll()
    monitor.quarantine(0, "xid 79: GPU has fallen off the bus")
    monkeypatch.setenv("ML_SUPERVISOR_BOOT_ID", "boot-2")
    after_reboot = make_monitor(gpu_file, tmp_path)
    [event] = after_reboot.poll()
    assert event.reason == "gpu 0: healthy again after a reset; quarantine cleared"
    assert after_reboot.allocatable() == [0, 1]


def test_quarantine_follows_the_uuid(gpu_file: FakeGpuFile, tmp_path: Path, boot_id: str) -> None:
    monitor = make_monitor(gpu_file, tmp_path)
    monitor.poll()
    monitor.quarantine(1, "bad")
    # the node came back with its GPUs enumerated the other way round
    gpu_file.gpus[0]["uuid"], gpu_file.gpus[1]["uuid"] = "GPU-fake-1", "GPU-fake-0"
    gpu_file.write()
    moved = make_monitor(gpu_file, tmp_path)
    moved.poll()
    assert moved.allocatable() == [1]
    assert moved.quarantined() == {0: "bad"}


def test_unreadable_quarantine_file_is_reported(tmp_path: Path, gpu_file: FakeGpuFile, boot_id: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state" / "gpu-quarantine.json"
    path.parent.mkdir()
    path.write_text("{")
    monitor = make_monitor(gpu_file, tmp_path)
    monitor.poll()
    assert monitor.allocatable() == [0, 1]
    assert any("gpu-quarantine.json: unreadable" in r.getMessage() for r in caplog.records)


def test_snapshot_entry_for_supervisorctl(gpu_file: FakeGpuFile, tmp_path: Path, boot_id: str) -> None:
    gpu_file.set(0, memory_used_mib=2048, temperature_c=63)
    monitor = make_monitor(gpu_file, tmp_path)
    monitor.poll()
    entry = monitor.snapshot()[0].as_dict(jobs=["digits-1"])
    assert entry == {
        "index": 0, "uuid": "GPU-fake-0", "name": "Fake H100", "health": "healthy", "reasons": [],
        "jobs": ["digits-1"], "temperature_c": 63.0, "memory_used_mib": 2048, "memory_total_mib": 81559,
        "processes": [], "quarantined_since": None, "read_errors": 0,
        "performance": {"gpu": 0, "name": "Fake H100", "temperature_c": 63.0},
    }
    json.dumps(entry)


def test_on_event_errors_do_not_break_the_monitor(gpu_file: FakeGpuFile, tmp_path: Path, boot_id: str) -> None:
    def broken(event: GpuEvent) -> None:
        raise RuntimeError("handler bug")

    monitor = GpuMonitor(gpu_file.backend(), tmp_path / "q.json", GpuThresholds(), broken)
    gpu_file.set(0, lost=True)
    [event] = monitor.poll()
    assert event.health == "failed"


# ------------------------------------------------------------------------------------------- allocation


@pytest.mark.parametrize(("n", "candidates", "busy", "expected"), [
    (0, [0, 1], {}, []),
    (1, [0, 1, 2, 3], {}, [0]),
    (2, [3, 1, 2, 0], {0: "job-a"}, [1, 2]),
    (2, [0, 2], {0: "job-a"}, None),  # too few free: the job waits in queued
    (1, [], {}, None),  # every GPU quarantined
    (3, [0, 1, 2], {}, [0, 1, 2]),
    (1, [1, 1], {}, [1]),
])
def test_allocate_table(n: int, candidates: list[int], busy: dict[int, str], expected: list[int] | None) -> None:
    assert allocate(n, candidates, busy) == expected


def test_allocate_rejects_a_negative_count() -> None:
    with pytest.raises(ValueError):
        allocate(-1, [0], {})


def test_cuda_environment_uses_nvml_numbering() -> None:
    assert cuda_environment([2, 0]) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "2,0"}
    assert cuda_environment([]) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ""}
