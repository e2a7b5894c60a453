"""GPUs: NVML readings (real or simulated), health, quarantine, allocation and pre-flight.

No torch here: the daemon talks to the driver through NVML only.

    types.py      the GpuBackend protocol and its values (readings, processes, Xid events)
    nvml.py       NvmlBackend: the real NVML
    simulated.py  FakeNvmlBackend: NVML simulated by a JSON file
    backend.py    open_backend(): which one this node gets
    health.py     classify() a reading; the Xid catalogue (classify_xid)
    monitor.py    GpuMonitor: poll + Xid threads, quarantine file, snapshot(), allocatable()
    allocate.py   allocate() GPUs to a job; cuda_environment()
    preflight.py  preflight(): no process left on the GPUs before a launch
"""

from supervisor.gpu.allocate import allocate, cuda_environment
from supervisor.gpu.backend import (
    FakeNvmlBackend,
    GpuBackend,
    GpuBackendError,
    GpuLost,
    GpuProcess,
    GpuReading,
    NvmlBackend,
    XidEvent,
    open_backend,
)
from supervisor.gpu.health import GpuThresholds, XidClass, classify, classify_xid
from supervisor.gpu.monitor import GpuEvent, GpuMonitor, GpuStatus
from supervisor.gpu.preflight import PreflightResult, preflight

__all__ = [
    "FakeNvmlBackend", "GpuBackend", "GpuBackendError", "GpuEvent", "GpuLost", "GpuMonitor", "GpuProcess",
    "GpuReading", "GpuStatus", "GpuThresholds", "NvmlBackend", "PreflightResult", "XidClass", "XidEvent",
    "allocate", "classify", "classify_xid", "cuda_environment", "open_backend", "preflight",
]
