"""NVML simulated by a JSON file, selected with ``ML_SUPERVISOR_NVML=fake:FILE``.

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
- ``sm_clock_mhz``, ``sm_clock_max_mhz``, ``power_w``, ``power_limit_w``, ``pcie_gen``,
  ``pcie_gen_max``, ``pcie_width``, ``pcie_width_max`` (numbers): what a straggler report shows.
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

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from supervisor.gpu.types import (
    THROTTLE_REASON_BITS,
    GpuBackendError,
    GpuLost,
    GpuProcess,
    GpuReading,
    XidEvent,
    decode_throttle_reasons,
)

log = logging.getLogger("supervisor.gpu.backend")


# Numbers a straggler report shows (GpuReading's fields of the same names); absent: unknown, as on old drivers.
PERFORMANCE_FIELDS = ("sm_clock_mhz", "sm_clock_max_mhz", "power_w", "power_limit_w", "pcie_gen", "pcie_gen_max",
                      "pcie_width", "pcie_width_max")
_FAKE_FIELDS = {
    "index", "uuid", "name", "memory_total_mib", "memory_used_mib", "temperature_c", "ecc_uncorrected",
    "ecc_corrected", "retired_pages_pending", "remapped_rows_pending", "remapped_rows_failure", "lost", "xid",
    "throttle_reasons", "processes", *PERFORMANCE_FIELDS,
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
            sm_clock_mhz=_opt_int(gpu.get("sm_clock_mhz")), sm_clock_max_mhz=_opt_int(gpu.get("sm_clock_max_mhz")),
            power_w=_opt_float(gpu.get("power_w")), power_limit_w=_opt_float(gpu.get("power_limit_w")),
            pcie_gen=_opt_int(gpu.get("pcie_gen")), pcie_gen_max=_opt_int(gpu.get("pcie_gen_max")),
            pcie_width=_opt_int(gpu.get("pcie_width")), pcie_width_max=_opt_int(gpu.get("pcie_width_max")),
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
        for key in ("temperature_c", "memory_used_mib", "memory_total_mib", "ecc_uncorrected", "ecc_corrected",
                    *PERFORMANCE_FIELDS):
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
