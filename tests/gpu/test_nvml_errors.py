"""NVML errors read right (issue 11, item 5): only "lost" and "reset required" mean a lost GPU.

The real ``NvmlBackend`` over the real ``pynvml`` module, whose C calls are
replaced by a scripted driver (the accepted simulation: this machine has no
GPU). Errors are pynvml's own ``NVMLError`` objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from supervisor.gpu.health import GpuThresholds
from supervisor.gpu.monitor import GpuMonitor
from supervisor.gpu.nvml import NvmlBackend
from supervisor.gpu.types import GpuLost, GpuReadError


class ScriptedDriver:
    """One GPU whose UUID read fails with the queued NVML error codes, then answers."""

    def __init__(self) -> None:
        self.uuid_errors: list[int] = []
        self.temperature_error: int | None = None

    def uuid(self, handle: Any) -> str:
        if self.uuid_errors:
            raise pynvml.NVMLError(self.uuid_errors.pop(0))
        return "GPU-scripted-0"

    def temperature(self, handle: Any, sensor: int) -> int:
        if self.temperature_error is not None:
            raise pynvml.NVMLError(self.temperature_error)
        return 45


def _unsupported(*args: Any) -> Any:
    raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedDriver]:
    scripted = ScriptedDriver()
    calls: dict[str, Callable[..., Any]] = {
        "nvmlInit": lambda: None, "nvmlShutdown": lambda: None, "nvmlDeviceGetCount": lambda: 1,
        "nvmlEventSetCreate": _unsupported, "nvmlDeviceGetHandleByIndex": lambda index: object(),
        "nvmlDeviceGetUUID": scripted.uuid, "nvmlDeviceGetName": lambda handle: "Scripted H200",
        "nvmlDeviceGetTemperature": scripted.temperature,
        "nvmlDeviceGetMemoryInfo": lambda handle: SimpleNamespace(used=0, total=141 * 1024**3),
        "nvmlDeviceGetComputeRunningProcesses": lambda handle: [],
    }
    for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons",
                 "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRetiredPagesPendingStatus",
                 "nvmlDeviceGetRemappedRows", "nvmlDeviceGetClockInfo", "nvmlDeviceGetMaxClockInfo",
                 "nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetCurrPcieLinkGeneration",
                 "nvmlDeviceGetMaxPcieLinkGeneration", "nvmlDeviceGetCurrPcieLinkWidth",
                 "nvmlDeviceGetMaxPcieLinkWidth"):
        calls[name] = _unsupported
    for name, fn in calls.items():
        monkeypatch.setattr(pynvml, name, fn)
    monkeypatch.setattr("supervisor.gpu.nvml.IDENTITY_RETRY_S", 0.0)
    yield scripted


def test_a_transient_uuid_error_is_retried_and_counted_not_a_lost_gpu(driver: ScriptedDriver) -> None:
    driver.uuid_errors = [pynvml.NVML_ERROR_TIMEOUT, pynvml.NVML_ERROR_UNKNOWN]
    backend = NvmlBackend()
    reading = backend.read(0)
    assert reading.uuid == "GPU-scripted-0"
    assert backend.error_counts == {"NVML_ERROR_TIMEOUT": 1, "NVML_ERROR_UNKNOWN": 1}


def test_a_persistent_transient_error_fails_the_read_without_calling_the_gpu_lost(driver: ScriptedDriver) -> None:
    driver.uuid_errors = [pynvml.NVML_ERROR_UNKNOWN] * 10
    backend = NvmlBackend()
    with pytest.raises(GpuReadError):
        backend.read(0)
    assert backend.error_counts["NVML_ERROR_UNKNOWN"] == 3


@pytest.mark.parametrize(("code", "reason"), [(pynvml.NVML_ERROR_GPU_IS_LOST, "GPU is lost"),
                                              (pynvml.NVML_ERROR_RESET_REQUIRED, "GPU requires a reset")])
def test_lost_and_reset_required_mean_lost_at_once(driver: ScriptedDriver, code: int, reason: str) -> None:
    driver.uuid_errors = [code]
    with pytest.raises(GpuLost) as lost:
        NvmlBackend().read(0)
    assert lost.value.reason == reason
    assert driver.uuid_errors == []  # no retry: a lost GPU is lost


def test_unknown_error_on_a_reading_is_counted_and_logged_not_silently_absent(
        driver: ScriptedDriver, caplog: pytest.LogCaptureFixture) -> None:
    driver.temperature_error = pynvml.NVML_ERROR_UNKNOWN
    backend = NvmlBackend()
    with caplog.at_level("WARNING", logger="supervisor.gpu.backend"):
        reading = backend.read(0)
    assert reading.temperature_c is None
    assert backend.error_counts == {"NVML_ERROR_UNKNOWN": 1}
    assert any("a reading failed" in r.getMessage() for r in caplog.records)


def test_the_monitor_does_not_quarantine_a_gpu_on_a_transient_error(driver: ScriptedDriver, tmp_path: Path) -> None:
    events: list[Any] = []
    monitor = GpuMonitor(NvmlBackend(), tmp_path / "q.json", GpuThresholds(), events.append)
    monitor.poll()
    assert monitor.allocatable() == [0]
    driver.uuid_errors = [pynvml.NVML_ERROR_UNKNOWN] * 10
    monitor.poll()
    assert monitor.quarantined() == {}
    assert monitor.allocatable() == [0]
    assert monitor.read_errors == {0: 1}
    assert monitor.snapshot()[0].as_dict()["read_errors"] == 1  # supervisorctl gpus --json shows the count
    assert [e for e in events if e.health == "failed"] == []
