"""The GPU backend interface: the ``GpuBackend`` protocol and the values it returns.

Two implementations: ``nvml.NvmlBackend`` (the real NVML) and
``simulated.FakeNvmlBackend`` (a JSON file, the only simulation the project
accepts); ``backend.open_backend`` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# NVML's clocks-event ("throttle") reason bits, by the names we use in readings and in the fake file.
# Values from nvml.h (nvmlClocksEventReason*); identical to the older nvmlClocksThrottleReason* bits.
THROTTLE_REASON_BITS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}


def decode_throttle_reasons(mask: int) -> frozenset[str]:
    """The names of the reason bits set in an NVML clocks-event mask (unknown bits are dropped)."""
    return frozenset(name for name, bit in THROTTLE_REASON_BITS.items() if mask & bit)


@dataclass(frozen=True)
class GpuProcess:
    """A compute process holding a CUDA context on a GPU."""

    pid: int
    used_mib: int | None  # None: NVML cannot tell (e.g. no permission, MIG)


@dataclass(frozen=True)
class GpuReading:
    """One read of one GPU. A field is ``None`` when the GPU or driver does not support it."""

    index: int
    uuid: str
    name: str
    temperature_c: float | None = None
    memory_used_mib: int | None = None
    memory_total_mib: int | None = None
    throttle_reasons: frozenset[str] | None = None
    ecc_uncorrected: int | None = None  # volatile (since the last driver load / reset)
    ecc_corrected: int | None = None  # volatile
    retired_pages_pending: bool | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failure: bool | None = None
    processes: tuple[GpuProcess, ...] = field(default_factory=tuple)
    # What a straggler report shows of its GPU (a slow GPU that still runs): clocks, power, the PCIe link.
    sm_clock_mhz: int | None = None
    sm_clock_max_mhz: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    pcie_gen: int | None = None
    pcie_gen_max: int | None = None
    pcie_width: int | None = None
    pcie_width_max: int | None = None

    def performance(self) -> dict[str, object]:
        """The fields that explain a slow GPU (for a straggler or slowdown event), the unknown ones left out."""
        facts: dict[str, object] = {
            "gpu": self.index, "name": self.name, "temperature_c": self.temperature_c,
            "throttle_reasons": sorted(self.throttle_reasons) if self.throttle_reasons is not None else None,
            "sm_clock_mhz": self.sm_clock_mhz, "sm_clock_max_mhz": self.sm_clock_max_mhz,
            "power_w": self.power_w, "power_limit_w": self.power_limit_w,
            "pcie_gen": self.pcie_gen, "pcie_gen_max": self.pcie_gen_max,
            "pcie_width": self.pcie_width, "pcie_width_max": self.pcie_width_max,
        }
        return {k: v for k, v in facts.items() if v is not None}


@dataclass(frozen=True)
class XidEvent:
    """A critical Xid reported by the driver for one GPU (``index`` None: the GPU could not be identified)."""

    index: int | None
    xid: int


class GpuBackendError(Exception):
    """NVML (or the fake file) cannot be used at all."""


class GpuReadError(Exception):
    """NVML answered a GPU's read with a transient error (not "lost", not "reset required"): try again later."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"gpu {index}: {reason}")
        self.index = index
        self.reason = reason


class GpuLost(Exception):
    """A GPU no longer answers: NVML's "GPU is lost" or "GPU requires reset"."""

    def __init__(self, index: int, reason: str = "GPU is lost") -> None:
        super().__init__(f"gpu {index}: {reason}")
        self.index = index
        self.reason = reason


@runtime_checkable
class GpuBackend(Protocol):
    """What the monitor needs from NVML. Implementations are safe to call from two threads at once."""

    def device_count(self) -> int:
        """How many GPUs the node has."""
        ...

    def read(self, index: int) -> GpuReading:
        """Read one GPU now. Raises ``GpuLost`` when the GPU is lost, ``IndexError`` for a bad index."""
        ...

    def wait_xid(self, timeout_s: float) -> XidEvent | None:
        """Block up to ``timeout_s`` for the next critical Xid event; ``None`` when none came."""
        ...

    def close(self) -> None:
        """Release NVML (or the file). Further calls are not allowed."""
        ...
