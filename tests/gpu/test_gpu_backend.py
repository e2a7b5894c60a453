"""The GPU backends: the real NVML failing cleanly on this GPU-less machine, and the simulated one."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.gpu.backend import (
    ENV_VAR,
    FakeNvmlBackend,
    GpuBackend,
    GpuBackendError,
    GpuLost,
    NvmlBackend,
    XidEvent,
    decode_throttle_reasons,
    open_backend,
)

from .conftest import FakeGpuFile


def _nvml_works() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


_HAS_NVML = _nvml_works()


def needs_no_nvml(test: Callable[..., None]) -> Callable[..., None]:
    """Only where NVML does not work (CI has no GPU; on a GPU box the GPU check covers it)."""
    skip = pytest.mark.skipif(_HAS_NVML, reason="this machine has a working NVML; the GPU check covers it")
    return pytest.mark.ci_may_skip("a GPU box's working NVML")(skip(test))


def _backend_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "supervisor.gpu.backend"]


# ------------------------------------------------------------------------------------------- real NVML


@needs_no_nvml
def test_no_nvml_gives_none_and_one_clear_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert open_backend({}) is None
    records = _backend_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    message = records[0].getMessage()
    assert message.startswith("GPU features off: NVML is not available (")
    assert "CPU jobs run as usual" in message
    assert "\n" not in message


@needs_no_nvml
def test_real_nvml_backend_fails_cleanly() -> None:
    with pytest.raises(GpuBackendError, match=r"^NVML is not available \(.+\)$"):
        NvmlBackend()


@needs_no_nvml
def test_explicit_nvml_choice_also_fails_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert open_backend({ENV_VAR: "nvml"}) is None
    assert len(_backend_records(caplog)) == 1


def test_gpu_features_can_be_switched_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert open_backend({ENV_VAR: "off"}) is None
    assert [r.getMessage() for r in _backend_records(caplog)] == [f"GPU features off ({ENV_VAR}=off)"]


def test_unknown_choice_is_one_error_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert open_backend({ENV_VAR: "fake-ish"}) is None
    records = _backend_records(caplog)
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    assert ENV_VAR in records[0].getMessage()


def test_daemon_side_imports_no_torch() -> None:
    code = ("import sys, supervisor.gpu, supervisor.rules.hang, supervisor.processes.stacks; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pytorch_lightning', 'wandb')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------- simulated NVML


def test_fake_backend_is_selected_by_the_environment(gpu_file: FakeGpuFile) -> None:
    backend = open_backend({ENV_VAR: f"fake:{gpu_file.path}"})
    assert isinstance(backend, FakeNvmlBackend)
    assert isinstance(backend, GpuBackend)
    assert backend.device_count() == 2


def test_fake_reading_has_every_field(gpu_file: FakeGpuFile) -> None:
    gpu_file.set(1, temperature_c=71, memory_used_mib=1234, ecc_corrected=3, throttle_reasons=["sw_power_cap"],
                 remapped_rows_pending=True)
    reading = gpu_file.backend().read(1)
    assert (reading.index, reading.uuid, reading.name) == (1, "GPU-fake-1", "Fake H100")
    assert reading.temperature_c == 71.0
    assert (reading.memory_used_mib, reading.memory_total_mib) == (1234, 81559)
    assert (reading.ecc_uncorrected, reading.ecc_corrected) == (0, 3)
    assert reading.throttle_reasons == frozenset({"sw_power_cap"})
    assert reading.retired_pages_pending is False
    assert reading.remapped_rows_pending is True
    assert reading.processes == ()


def test_fake_throttle_reasons_accept_nvml_bitmask(gpu_file: FakeGpuFile) -> None:
    gpu_file.set(0, throttle_reasons=0x40 | 0x4)
    assert gpu_file.backend().read(0).throttle_reasons == {"hw_thermal_slowdown", "sw_power_cap"}
    assert decode_throttle_reasons(0x1 | 0x8 | 0x10000) == {"gpu_idle", "hw_slowdown"}


def test_fake_file_is_reread_when_it_changes(gpu_file: FakeGpuFile) -> None:
    backend = gpu_file.backend()
    assert backend.read(0).temperature_c == 40
    gpu_file.set(0, temperature_c=90)
    assert backend.read(0).temperature_c == 90
    gpu_file.gpus.append({"index": 2})
    gpu_file.write()
    assert backend.device_count() == 3
    assert backend.read(2).uuid == "GPU-fake-2"  # defaults fill what the file leaves out


def test_lost_gpu_fails_every_read(gpu_file: FakeGpuFile) -> None:
    backend = gpu_file.backend()
    gpu_file.set(1, lost=True)
    with pytest.raises(GpuLost) as info:
        backend.read(1)
    assert (info.value.index, info.value.reason) == (1, "GPU is lost")
    assert backend.read(0).uuid == "GPU-fake-0"
    with pytest.raises(IndexError):
        backend.read(7)


def test_appended_xid_is_delivered_once(gpu_file: FakeGpuFile) -> None:
    backend = gpu_file.backend()
    assert backend.wait_xid(0.0) is None
    gpu_file.add_xid(1, 79)
    assert backend.wait_xid(1.0) == XidEvent(index=1, xid=79)
    assert backend.wait_xid(0.05) is None
    gpu_file.add_xid(0, 13)
    gpu_file.add_xid(0, 31)
    assert [backend.wait_xid(1.0), backend.wait_xid(1.0)] == [XidEvent(0, 13), XidEvent(0, 31)]


def test_xids_already_in_the_file_are_history(tmp_path: Path) -> None:
    gpu_file = FakeGpuFile(tmp_path / "nvml.json", 1)
    gpu_file.set(0, xid=[79])
    backend = gpu_file.backend()
    assert backend.wait_xid(0.05) is None


def test_wait_xid_blocks_for_its_timeout(gpu_file: FakeGpuFile) -> None:
    backend = gpu_file.backend()
    start = time.monotonic()
    assert backend.wait_xid(0.15) is None
    assert time.monotonic() - start >= 0.14  # it waited (how much longer is the box's load, not the backend's)


def test_fake_lists_only_live_processes(gpu_file: FakeGpuFile) -> None:
    live = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        gpu_file.set(0, processes=[{"pid": live.pid, "used_mib": 2048}, {"pid": dead.pid, "used_mib": 512}])
        del gpu_file.gpus[0]["memory_used_mib"]
        gpu_file.write()
        reading = gpu_file.backend().read(0)
        assert [(p.pid, p.used_mib) for p in reading.processes] == [(live.pid, 2048)]
        assert reading.memory_used_mib == 2048
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize(("gpus", "message"), [
    ([{"index": 0, "temprature_c": 40}], r"nvml\.json: gpus\[0\]\.temprature_c: unknown field"),
    ([{"index": 0, "xid": ["79"]}], r"gpus\[0\]\.xid: expected a list of integers"),
    ([{"index": 0, "throttle_reasons": ["too_hot"]}], r"gpus\[0\]\.throttle_reasons: unknown reason 'too_hot'"),
    ([{"index": 1}], r"indices must be 0\.\.0 without gaps"),
    ([{"index": 0, "temperature_c": "hot"}], r"gpus\[0\]\.temperature_c: expected a number"),
    ([{"index": 0, "processes": [{"used_mib": 3}]}], r"gpus\[0\]\.processes: expected a list"),
    ("nope", r"gpus: expected a list of GPU objects"),
])
def test_bad_fake_file_is_one_line_naming_file_and_key(tmp_path: Path, gpus: object, message: str) -> None:
    path = tmp_path / "nvml.json"
    path.write_text(json.dumps({"gpus": gpus}))
    with pytest.raises(GpuBackendError, match=message) as info:
        FakeNvmlBackend(path)
    assert "\n" not in str(info.value)


def test_bad_fake_file_turns_gpu_features_off_with_one_line(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "nvml.json"
    path.write_text("{not json")
    assert open_backend({ENV_VAR: f"fake:{path}"}) is None
    assert open_backend({ENV_VAR: f"fake:{tmp_path / 'missing.json'}"}) is None
    messages = [r.getMessage() for r in _backend_records(caplog)]
    assert len(messages) == 2
    assert str(path) in messages[0] and "not valid JSON" in messages[0]
    assert "missing.json" in messages[1]


def test_a_half_written_file_keeps_the_last_good_content(gpu_file: FakeGpuFile,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    backend = gpu_file.backend()
    gpu_file.path.write_text('{"gpus": [')  # a writer caught mid-way
    assert backend.device_count() == 2
    assert any("keeping the previous content" in r.getMessage() for r in caplog.records)
    gpu_file.set(0, temperature_c=55)
    assert backend.read(0).temperature_c == 55
