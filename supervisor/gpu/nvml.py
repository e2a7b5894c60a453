"""The real NVIDIA Management Library (``pynvml``, the ``nvidia-ml-py`` package) as a ``GpuBackend``."""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from supervisor.gpu.types import (
    GpuBackendError,
    GpuLost,
    GpuProcess,
    GpuReadError,
    GpuReading,
    XidEvent,
    decode_throttle_reasons,
)

log = logging.getLogger("supervisor.gpu.backend")

# A GPU's identity reads (handle, UUID, name) that fail with anything but "lost" / "reset
# required" are retried this many times, this far apart, before the read gives up for now.
IDENTITY_TRIES = 3
IDENTITY_RETRY_S = 0.05


class NvmlBackend:
    """The real NVML through ``pynvml``. ``NvmlBackend()`` raises ``GpuBackendError`` when NVML cannot start."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:  # nvidia-ml-py is a dependency; this is a broken install
            raise GpuBackendError(f"the nvidia-ml-py package is not importable ({exc})") from None
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise GpuBackendError(f"NVML is not available ({_nvml_text(exc)})") from None
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise GpuBackendError(f"NVML cannot count the GPUs ({_nvml_text(exc)})") from None
        self._event_set: Any = None
        # NVML errors by name ("NVML_ERROR_UNKNOWN": 3): transient ones are retried and counted, never "lost"
        self.error_counts: Counter[str] = Counter()
        self._handle_index: dict[int | None, int] = {}
        self._no_events_logged = False
        self._setup_events()

    # -- the interface

    def device_count(self) -> int:
        return self._count

    def read(self, index: int) -> GpuReading:
        nv = self._nvml
        if not 0 <= index < self._count:
            raise IndexError(f"gpu {index}: no such GPU (the node has {self._count})")
        handle = self._identity(index, lambda: nv.nvmlDeviceGetHandleByIndex(index))
        uuid = _text(self._identity(index, lambda: nv.nvmlDeviceGetUUID(handle)))
        name = _text(self._identity(index, lambda: nv.nvmlDeviceGetName(handle)))
        opt = _Optional(nv, index, self._lost_or_error, self.error_counts)
        temperature = opt(lambda: float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)))
        memory = opt(lambda: nv.nvmlDeviceGetMemoryInfo(handle))
        mask = opt(lambda: int(nv.nvmlDeviceGetCurrentClocksEventReasons(handle)))
        if mask is None and opt.last_missing_function:
            # drivers older than r535 only have the deprecated name
            mask = opt(lambda: int(nv.nvmlDeviceGetCurrentClocksThrottleReasons(handle)))
        ecc_unc = opt(lambda: int(nv.nvmlDeviceGetTotalEccErrors(
            handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC)))
        ecc_cor = opt(lambda: int(nv.nvmlDeviceGetTotalEccErrors(
            handle, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_VOLATILE_ECC)))
        # Ampere and newer remap rows instead of retiring pages; each reports NotSupported for the other.
        retired = opt(lambda: bool(nv.nvmlDeviceGetRetiredPagesPendingStatus(handle)))
        remap = opt(lambda: nv.nvmlDeviceGetRemappedRows(handle))
        procs = opt(lambda: nv.nvmlDeviceGetComputeRunningProcesses(handle))
        sm_clock = opt(lambda: int(nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM)))
        sm_clock_max = opt(lambda: int(nv.nvmlDeviceGetMaxClockInfo(handle, nv.NVML_CLOCK_SM)))
        power_mw = opt(lambda: float(nv.nvmlDeviceGetPowerUsage(handle)))
        limit_mw = opt(lambda: float(nv.nvmlDeviceGetEnforcedPowerLimit(handle)))
        pcie_gen = opt(lambda: int(nv.nvmlDeviceGetCurrPcieLinkGeneration(handle)))
        pcie_gen_max = opt(lambda: int(nv.nvmlDeviceGetMaxPcieLinkGeneration(handle)))
        pcie_width = opt(lambda: int(nv.nvmlDeviceGetCurrPcieLinkWidth(handle)))
        pcie_width_max = opt(lambda: int(nv.nvmlDeviceGetMaxPcieLinkWidth(handle)))
        return GpuReading(
            index=index,
            uuid=uuid,
            name=name,
            temperature_c=temperature,
            memory_used_mib=_mib(memory.used) if memory is not None else None,
            memory_total_mib=_mib(memory.total) if memory is not None else None,
            throttle_reasons=decode_throttle_reasons(mask) if mask is not None else None,
            ecc_uncorrected=ecc_unc,
            ecc_corrected=ecc_cor,
            retired_pages_pending=retired,
            remapped_rows_pending=bool(remap[2]) if remap is not None else None,
            remapped_rows_failure=bool(remap[3]) if remap is not None else None,
            processes=tuple(_nvml_processes(procs or [])),
            sm_clock_mhz=sm_clock, sm_clock_max_mhz=sm_clock_max,
            power_w=None if power_mw is None else power_mw / 1000.0,
            power_limit_w=None if limit_mw is None else limit_mw / 1000.0,
            pcie_gen=pcie_gen, pcie_gen_max=pcie_gen_max, pcie_width=pcie_width, pcie_width_max=pcie_width_max,
        )

    def wait_xid(self, timeout_s: float) -> XidEvent | None:
        nv = self._nvml
        if self._event_set is None:
            time.sleep(max(0.0, timeout_s))  # nothing registered: behave like a quiet event set
            return None
        try:
            data = nv.nvmlEventSetWait_v2(self._event_set, max(0, int(timeout_s * 1000)))
        except nv.NVMLError as exc:
            if getattr(exc, "value", None) != nv.NVML_ERROR_TIMEOUT:
                # e.g. a GPU of the set is lost: the poll thread reports that; don't spin here
                log.debug("NVML event wait failed: %s", _nvml_text(exc))
                time.sleep(max(0.0, timeout_s))
            return None
        if not int(data.eventType) & nv.nvmlEventTypeXidCriticalError:
            return None
        return XidEvent(index=self._index_of(data.device), xid=int(data.eventData))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        nv = self._nvml
        if self._event_set is not None:
            try:
                nv.nvmlEventSetFree(self._event_set)
            except nv.NVMLError:
                pass
            self._event_set = None
        try:
            nv.nvmlShutdown()
        except nv.NVMLError:
            pass

    # -- helpers

    def _setup_events(self) -> None:
        """Register every GPU for critical Xid events; a GPU that does not support them is logged and skipped."""
        nv = self._nvml
        try:
            self._event_set = nv.nvmlEventSetCreate()
        except nv.NVMLError as exc:
            log.warning("NVML: no Xid events (cannot create an event set: %s)", _nvml_text(exc))
            return
        registered = 0
        for index in range(self._count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                nv.nvmlDeviceRegisterEvents(handle, nv.nvmlEventTypeXidCriticalError, self._event_set)
            except nv.NVMLError as exc:
                log.warning("NVML: gpu %d: no Xid events (%s)", index, _nvml_text(exc))
                continue
            self._handle_index[_handle_key(handle)] = index
            registered += 1
        if registered == 0:
            try:
                nv.nvmlEventSetFree(self._event_set)
            except nv.NVMLError:
                pass
            self._event_set = None

    def _index_of(self, handle: Any) -> int | None:
        index = self._handle_index.get(_handle_key(handle))
        if index is not None:
            return index
        try:
            return int(self._nvml.nvmlDeviceGetIndex(handle))
        except self._nvml.NVMLError:
            return None

    def _identity(self, index: int, getter: Callable[[], Any]) -> Any:
        """One identity read, retried on transient errors; ``GpuLost`` only for lost / reset required.

        A timeout or an unknown error from a busy driver is not a lost GPU: quarantining it
        and stopping the attempt on it would cost a run for nothing. It is counted, and the
        read fails with ``GpuReadError`` (the monitor keeps the last health) if it persists.
        """
        nv = self._nvml
        for attempt in range(IDENTITY_TRIES):
            try:
                return getter()
            except nv.NVMLError as exc:
                error = self._lost_or_error(index, exc)
                if isinstance(error, GpuLost):
                    raise error from None
                self.error_counts[_nvml_name(nv, exc)] += 1
                log.warning("NVML: gpu %d: transient error (%s), try %d of %d", index, _nvml_text(exc),
                            attempt + 1, IDENTITY_TRIES)
                last: Exception = error
            if attempt + 1 < IDENTITY_TRIES:
                time.sleep(IDENTITY_RETRY_S)
        raise last

    def _lost_or_error(self, index: int, exc: Exception) -> Exception:
        nv = self._nvml
        value = getattr(exc, "value", None)
        if value == nv.NVML_ERROR_GPU_IS_LOST:
            return GpuLost(index, "GPU is lost")
        if value == nv.NVML_ERROR_RESET_REQUIRED:
            return GpuLost(index, "GPU requires a reset")
        return GpuReadError(index, f"NVML cannot read the GPU now ({_nvml_text(exc)})")


class _Optional:
    """Call one NVML getter; "not supported"-like errors give ``None``, a lost GPU raises ``GpuLost``."""

    def __init__(self, nv: Any, index: int, lost: Any, error_counts: Counter[str]) -> None:
        self._nv = nv
        self._index = index
        self._lost = lost
        self._error_counts = error_counts
        self.last_missing_function = False
        # Errors that mean "this field is not available here", not "this GPU is broken".
        self._absent = {
            nv.NVML_ERROR_NOT_SUPPORTED, nv.NVML_ERROR_NO_PERMISSION, nv.NVML_ERROR_FUNCTION_NOT_FOUND,
            nv.NVML_ERROR_INVALID_ARGUMENT, nv.NVML_ERROR_NOT_FOUND, nv.NVML_ERROR_INSUFFICIENT_SIZE,
            nv.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
        }

    def __call__(self, getter: Any) -> Any:
        nv = self._nv
        self.last_missing_function = False
        try:
            return getter()
        except nv.NVMLError as exc:
            value = getattr(exc, "value", None)
            if value in (nv.NVML_ERROR_GPU_IS_LOST, nv.NVML_ERROR_RESET_REQUIRED):
                raise self._lost(self._index, exc) from None
            self.last_missing_function = value == nv.NVML_ERROR_FUNCTION_NOT_FOUND
            if value not in self._absent:
                # NVML_ERROR_UNKNOWN and the like: the field is missing this time, for a reason worth seeing
                self._error_counts[_nvml_name(nv, exc)] += 1
                log.warning("NVML: gpu %d: a reading failed: %s", self._index, _nvml_text(exc))
            return None
        except AttributeError:
            # an older pynvml without this function
            self.last_missing_function = True
            return None


def _nvml_text(exc: Exception) -> str:
    try:
        return str(exc)
    except Exception:  # pynvml's __str__ itself calls into the library
        return type(exc).__name__


def _nvml_name(nv: Any, exc: Exception) -> str:
    """``NVML_ERROR_UNKNOWN`` for an error of that value (its pynvml constant's name), for the counts."""
    value = getattr(exc, "value", None)
    for name in dir(nv):
        if name.startswith("NVML_ERROR_") and getattr(nv, name) == value:
            return str(name)
    return f"NVML_ERROR_{value}"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _mib(nbytes: Any) -> int:
    return int(nbytes) // (1024 * 1024)


def _handle_key(handle: Any) -> int | None:
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return None


def _nvml_processes(procs: Any) -> list[GpuProcess]:
    out = []
    for proc in procs:
        used = getattr(proc, "usedGpuMemory", None)
        # NVML reports NVML_VALUE_NOT_AVAILABLE (2**64-1) when it cannot tell; pynvml maps it to None.
        out.append(GpuProcess(pid=int(proc.pid), used_mib=_mib(used) if isinstance(used, int) else None))
    return out
