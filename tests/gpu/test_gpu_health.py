"""Health classification and the Xid catalogue, as tables (pure functions, no NVML)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from supervisor.gpu.backend import GpuLost, GpuReading
from supervisor.gpu.health import GpuThresholds, classify, classify_xid

OK = GpuReading(index=0, uuid="GPU-a", name="H100", temperature_c=50.0, memory_used_mib=0,
                memory_total_mib=81559, throttle_reasons=frozenset(), ecc_uncorrected=0, ecc_corrected=5,
                retired_pages_pending=False, remapped_rows_pending=False, remapped_rows_failure=False)
T = GpuThresholds()


@pytest.mark.parametrize(("changes", "health", "reason"), [
    ({}, "healthy", None),
    ({"temperature_c": 84.9}, "healthy", None),
    ({"temperature_c": 85.0}, "degraded", "temperature 85 C >= 85 C"),
    ({"throttle_reasons": frozenset({"sw_power_cap", "gpu_idle"})}, "healthy", None),
    ({"throttle_reasons": frozenset({"hw_thermal_slowdown"})}, "degraded", "clocks slowed: hw_thermal_slowdown"),
    ({"throttle_reasons": frozenset({"hw_power_brake_slowdown", "sw_thermal_slowdown"})}, "degraded",
     "clocks slowed: hw_power_brake_slowdown, sw_thermal_slowdown"),
    ({"ecc_uncorrected": 1}, "failed", "uncorrectable ECC errors: 1"),
    ({"retired_pages_pending": True}, "failed", "retired pages pending (a reset is needed to retire them)"),
    ({"remapped_rows_pending": True}, "failed", "row remapping pending (a reset is needed to remap)"),
    ({"remapped_rows_failure": True}, "failed", "row remapping failed"),
    ({"ecc_corrected": 15}, "degraded", "correctable ECC errors rising: +10 (now 15)"),
    ({"ecc_corrected": 14}, "healthy", None),
    # a field the GPU does not report never counts against it
    ({"temperature_c": None, "ecc_uncorrected": None, "throttle_reasons": None, "ecc_corrected": None,
      "retired_pages_pending": None, "remapped_rows_pending": None}, "healthy", None),
])
def test_classify_table(changes: dict[str, object], health: str, reason: str | None) -> None:
    got_health, reasons = classify(replace(OK, **changes), OK, T)
    assert got_health == health
    assert reasons == ([] if reason is None else [reason])


def test_failed_outranks_degraded_and_keeps_every_reason() -> None:
    health, reasons = classify(replace(OK, ecc_uncorrected=3, temperature_c=95.0), None, T)
    assert health == "failed"
    assert reasons == ["uncorrectable ECC errors: 3", "temperature 95 C >= 85 C"]


def test_lost_gpu_is_failed() -> None:
    assert classify(GpuLost(0), OK, T) == ("failed", ["GPU is lost"])


def test_optional_failure_temperature() -> None:
    hot = GpuThresholds(temperature_failed_c=95.0)
    assert classify(replace(OK, temperature_c=94.0), OK, hot) == ("degraded", ["temperature 94 C >= 85 C"])
    assert classify(replace(OK, temperature_c=96.0), OK, hot) == ("failed", ["temperature 96 C >= 95 C"])
    assert classify(replace(OK, temperature_c=120.0), OK, T)[0] == "degraded"  # off by default


def test_correctable_rise_needs_a_previous_reading_of_the_same_gpu() -> None:
    high = replace(OK, ecc_corrected=500)
    assert classify(high, None, T)[0] == "healthy"
    assert classify(high, replace(OK, uuid="GPU-other"), T)[0] == "healthy"
    assert classify(high, OK, T)[0] == "degraded"


def test_thresholds_are_configurable() -> None:
    strict = GpuThresholds(temperature_degraded_c=60.0, ecc_uncorrected_failed=5,
                           ecc_corrected_increase_degraded=1, degraded_throttle_reasons=("sw_power_cap",))
    assert classify(replace(OK, temperature_c=61.0), OK, strict)[0] == "degraded"
    assert classify(replace(OK, ecc_uncorrected=4), OK, strict)[0] == "healthy"
    assert classify(replace(OK, ecc_corrected=6), OK, strict)[0] == "degraded"
    assert classify(replace(OK, throttle_reasons=frozenset({"sw_power_cap"})), OK, strict)[0] == "degraded"
    assert classify(replace(OK, throttle_reasons=frozenset({"hw_slowdown"})), OK, strict)[0] == "healthy"


@pytest.mark.parametrize(("xid", "kind"), [
    # NVIDIA's catalogue: RESET_GPU / RESTART_BM / DBE / NVLink workflow -> the GPU is at fault
    (48, "gpu_fault"), (62, "gpu_fault"), (64, "gpu_fault"), (74, "gpu_fault"), (79, "gpu_fault"),
    (95, "gpu_fault"), (119, "gpu_fault"), (120, "gpu_fault"), (136, "gpu_fault"), (140, "gpu_fault"),
    # RESTART_APP and the channel teardown of a dying process -> the job's error
    (13, "application"), (31, "application"), (43, "application"), (45, "application"), (94, "application"),
    # hardware notes that do not stop the GPU
    (63, "degraded"), (92, "degraded"), (144, "degraded"),
    # unused or unknown codes
    (1, "info"), (999, "info"),
])
def test_xid_catalogue(xid: int, kind: str) -> None:
    cls = classify_xid(xid)
    assert cls.kind == kind
    assert cls.application is (kind == "application")
    assert cls.description


def test_xid_79_is_described_as_nvidia_does() -> None:
    assert classify_xid(79).description == "GPU has fallen off the bus"
