"""Where GPU readings come from: one interface, two implementations.

``NvmlBackend`` talks to the real NVIDIA Management Library (``pynvml``, the
``nvidia-ml-py`` package). ``FakeNvmlBackend`` reads a JSON file instead; it is
the only simulation the project accepts, selected with
``ML_SUPERVISOR_NVML=fake:FILE``. Both return the same ``GpuReading`` and
``XidEvent`` values, so everything above this module (health classification,
the monitor, pre-flight) runs unchanged on either.

The fake file (re-read whenever its mtime or size changes)::

    {"gpus": [{"index": 0, "uuid": "GPU-fake-0", "name": "Fake H100",
               "memory_total_mib": 81559, "memory_used_mib": 0, "temperature_c": 40,
               "ecc_uncorrected": 0, "retired_pages_pending": false, "lost": false,
               "xid": []}]}

Every field is optional except that each GPU must be an object (``index``
defaults to its position). Optional fields beyond the issue's list:

- ``ecc_corrected`` (int): volatile corrected (single-bit) ECC count.
- ``remapped_rows_pending`` / ``remapped_rows_failure`` (bool): row remapper state.
- ``throttle_reasons`` (list of names, see ``THROTTLE_REASON_BITS``, or an int
  bitmask as NVML returns it): current clock-event reasons.
- ``processes`` (list of ``{"pid": int, "used_mib": int}``): compute processes.
  As in real NVML, a process that has exited (or is a zombie) is not listed:
  its CUDA context is gone. When ``memory_used_mib`` is absent it is the sum of
  the listed live processes' ``used_mib``.

``lost: true`` makes every read of that GPU raise ``GpuLost``, as NVML's
``NVML_ERROR_GPU_IS_LOST`` does. Appending a number to ``xid`` delivers that
Xid event once through ``wait_xid``. Numbers already in the list when the
backend opens are history and are not delivered (real NVML only reports events
that happen after registration); if the list gets shorter, what remains counts
as delivered.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import psutil

log = logging.getLogger(__name__)

ENV_VAR = "ML_SUPERVISOR_NVML"

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


@dataclass(frozen=True)
class XidEvent:
    """A critical Xid reported by the driver for one GPU (``index`` None: the GPU could not be identified)."""

    index: int | None
    xid: int


class GpuBackendError(Exception):
    """NVML (or the fake file) cannot be used at all."""


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


# --------------------------------------------------------------------------------------------- real NVML


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
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nv.nvmlDeviceGetUUID(handle))
            name = _text(nv.nvmlDeviceGetName(handle))
        except nv.NVMLError as exc:
            raise self._lost_or_error(index, exc) from None
        opt = _Optional(nv, index, self._lost_or_error)
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

    def _lost_or_error(self, index: int, exc: Exception) -> Exception:
        nv = self._nvml
        value = getattr(exc, "value", None)
        if value == nv.NVML_ERROR_GPU_IS_LOST:
            return GpuLost(index, "GPU is lost")
        if value == nv.NVML_ERROR_RESET_REQUIRED:
            return GpuLost(index, "GPU requires a reset")
        return GpuLost(index, f"NVML cannot read the GPU ({_nvml_text(exc)})")


class _Optional:
    """Call one NVML getter; "not supported"-like errors give ``None``, a lost GPU raises ``GpuLost``."""

    def __init__(self, nv: Any, index: int, lost: Any) -> None:
        self._nv = nv
        self._index = index
        self._lost = lost
        self.last_missing_function = False
        # Errors that mean "this field is not available here", not "this GPU is broken".
        self._absent = {
            nv.NVML_ERROR_NOT_SUPPORTED, nv.NVML_ERROR_NO_PERMISSION, nv.NVML_ERROR_FUNCTION_NOT_FOUND,
            nv.NVML_ERROR_INVALID_ARGUMENT, nv.NVML_ERROR_NOT_FOUND, nv.NVML_ERROR_INSUFFICIENT_SIZE,
            nv.NVML_ERROR_UNKNOWN, nv.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
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
                log.debug("NVML: gpu %d: a reading failed: %s", self._index, _nvml_text(exc))
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


# --------------------------------------------------------------------------------------------- fake NVML

_FAKE_FIELDS = {
    "index", "uuid", "name", "memory_total_mib", "memory_used_mib", "temperature_c", "ecc_uncorrected",
    "ecc_corrected", "retired_pages_pending", "remapped_rows_pending", "remapped_rows_failure", "lost", "xid",
    "throttle_reasons", "processes",
}


class FakeNvmlBackend:
    """NVML simulated by a JSON file (see the module docstring). Raises ``GpuBackendError`` on a bad file."""

    def __init__(self, path: str | Path, *, xid_poll_s: float = 0.02) -> None:
        self.path = Path(path)
        self._xid_poll_s = xid_poll_s
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._gpus: list[dict[str, Any]] = []
        self._delivered: dict[int, int] = {}  # gpu index -> how many of its xids were delivered
        self._pending: list[XidEvent] = []
        self._bad_file_logged = False
        self._closed = False
        stamp = self._file_stamp()
        if stamp is None:
            raise GpuBackendError(f"{self.path}: cannot read the simulated NVML file")
        gpus = _parse_fake(self.path, self.path.read_bytes())
        self._stamp = stamp
        self._gpus = gpus
        self._delivered = {gpu["index"]: len(gpu["xid"]) for gpu in gpus}

    # -- the interface

    def device_count(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._gpus)

    def read(self, index: int) -> GpuReading:
        with self._lock:
            self._refresh()
            gpu = self._gpu(index)
        if gpu["lost"]:
            raise GpuLost(index, "GPU is lost")
        processes = tuple(
            GpuProcess(pid=int(p["pid"]), used_mib=None if p.get("used_mib") is None else int(p["used_mib"]))
            for p in gpu["processes"] if _alive(int(p["pid"]))
        )
        used = gpu.get("memory_used_mib")
        if used is None:
            used = sum(p.used_mib or 0 for p in processes)
        throttle = gpu.get("throttle_reasons")
        return GpuReading(
            index=index,
            uuid=str(gpu.get("uuid") or f"GPU-fake-{index}"),
            name=str(gpu.get("name") or "Fake GPU"),
            temperature_c=_opt_float(gpu.get("temperature_c", 40)),
            memory_used_mib=int(used),
            memory_total_mib=_opt_int(gpu.get("memory_total_mib", 81559)),
            throttle_reasons=None if throttle is None else _fake_throttle(throttle),
            ecc_uncorrected=_opt_int(gpu.get("ecc_uncorrected", 0)),
            ecc_corrected=_opt_int(gpu.get("ecc_corrected", 0)),
            retired_pages_pending=_opt_bool(gpu.get("retired_pages_pending", False)),
            remapped_rows_pending=_opt_bool(gpu.get("remapped_rows_pending", False)),
            remapped_rows_failure=_opt_bool(gpu.get("remapped_rows_failure", False)),
            processes=processes,
        )

    def wait_xid(self, timeout_s: float) -> XidEvent | None:
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            with self._lock:
                self._refresh()
                if self._pending:
                    return self._pending.pop(0)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(self._xid_poll_s, remaining))

    def close(self) -> None:
        with self._lock:
            self._closed = True

    # -- helpers

    def _gpu(self, index: int) -> dict[str, Any]:
        for gpu in self._gpus:
            if gpu["index"] == index:
                return gpu
        raise IndexError(f"gpu {index}: no such GPU in {self.path}")

    def _file_stamp(self) -> tuple[int, int, int] | None:
        # the inode too: an atomic replace within one mtime tick, with the same size, is still seen
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        """Re-read the file when it changed; queue the Xids appended since the last read."""
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return
        try:
            gpus = _parse_fake(self.path, self.path.read_bytes())
        except (GpuBackendError, OSError) as exc:
            # A writer may be half-way through (tests need not write atomically): keep the last good
            # content and look again next time, but say so once.
            if not self._bad_file_logged:
                log.warning("simulated NVML: keeping the previous content: %s", exc)
                self._bad_file_logged = True
            return
        self._bad_file_logged = False
        self._stamp = stamp
        self._gpus = gpus
        for gpu in gpus:
            index, xids = gpu["index"], gpu["xid"]
            done = min(self._delivered.get(index, 0), len(xids))
            self._pending.extend(XidEvent(index=index, xid=int(x)) for x in xids[done:])
            self._delivered[index] = len(xids)


def _parse_fake(path: Path, data: bytes) -> list[dict[str, Any]]:
    """Validate the simulated NVML file; one-line errors naming the file and the key."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise GpuBackendError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("gpus"), list):
        raise GpuBackendError(f"{path}: gpus: expected a list of GPU objects")
    gpus: list[dict[str, Any]] = []
    seen: set[int] = set()
    for pos, raw in enumerate(doc["gpus"]):
        where = f"{path}: gpus[{pos}]"
        if not isinstance(raw, dict):
            raise GpuBackendError(f"{where}: expected an object")
        unknown = sorted(set(raw) - _FAKE_FIELDS)
        if unknown:
            raise GpuBackendError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(sorted(_FAKE_FIELDS))})")
        gpu = dict(raw)
        gpu.setdefault("index", pos)
        if not isinstance(gpu["index"], int) or isinstance(gpu["index"], bool) or gpu["index"] < 0:
            raise GpuBackendError(f"{where}.index: expected a non-negative integer")
        if gpu["index"] in seen:
            raise GpuBackendError(f"{where}.index: {gpu['index']} appears twice")
        seen.add(gpu["index"])
        gpu["lost"] = bool(gpu.get("lost", False))
        xids = gpu.get("xid", [])
        if not isinstance(xids, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in xids):
            raise GpuBackendError(f"{where}.xid: expected a list of integers")
        gpu["xid"] = xids
        procs = gpu.get("processes", [])
        if not isinstance(procs, list) or not all(
            isinstance(p, dict) and isinstance(p.get("pid"), int) for p in procs
        ):
            raise GpuBackendError(f"{where}.processes: expected a list of {{\"pid\": int, \"used_mib\": int}}")
        gpu["processes"] = procs
        throttle = gpu.get("throttle_reasons")
        if throttle is not None:
            try:
                _fake_throttle(throttle)
            except ValueError as exc:
                raise GpuBackendError(f"{where}.throttle_reasons: {exc}") from None
        for key in ("temperature_c", "memory_used_mib", "memory_total_mib", "ecc_uncorrected", "ecc_corrected"):
            value = gpu.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise GpuBackendError(f"{where}.{key}: expected a number")
        gpus.append(gpu)
    gpus.sort(key=lambda g: g["index"])
    if [g["index"] for g in gpus] != list(range(len(gpus))):
        raise GpuBackendError(f"{path}: gpus: indices must be 0..{len(gpus) - 1} without gaps")
    return gpus


def _fake_throttle(value: Any) -> frozenset[str]:
    if isinstance(value, int) and not isinstance(value, bool):
        return decode_throttle_reasons(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        unknown = [v for v in value if v not in THROTTLE_REASON_BITS]
        if unknown:
            raise ValueError(f"unknown reason {unknown[0]!r} (known: {', '.join(THROTTLE_REASON_BITS)})")
        return frozenset(value)
    raise ValueError("expected a list of reason names or an integer bitmask")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


# --------------------------------------------------------------------------------------------- choosing one


def open_backend(environ: Mapping[str, str] = os.environ) -> GpuBackend | None:
    """The GPU backend for this node, or ``None`` (GPU features off) with ONE clear log line saying why.

    ``ML_SUPERVISOR_NVML=fake:FILE`` selects the simulated NVML; ``off`` (or
    ``none``) turns GPU features off; anything else (or unset) tries the real
    NVML, which fails cleanly on a node without an NVIDIA driver.
    """
    choice = environ.get(ENV_VAR, "").strip()
    if choice.lower() in ("off", "none", "0", "false"):
        log.info("GPU features off (%s=%s)", ENV_VAR, choice)
        return None
    if choice.startswith("fake:"):
        path = choice[len("fake:"):]
        try:
            backend: GpuBackend = FakeNvmlBackend(path)
        except GpuBackendError as exc:
            log.error("GPU features off: simulated NVML unusable: %s", exc)
            return None
        log.info("GPU backend: simulated NVML from %s (%d GPUs)", path, backend.device_count())
        return backend
    if choice and choice.lower() not in ("nvml", "real", "auto"):
        log.error("GPU features off: %s=%r is not understood (expected fake:FILE, nvml or off)", ENV_VAR, choice)
        return None
    try:
        backend = NvmlBackend()
    except GpuBackendError as exc:
        log.info("GPU features off: %s; CPU jobs run as usual", exc)
        return None
    log.info("GPU backend: NVML (%d GPUs)", backend.device_count())
    return backend
