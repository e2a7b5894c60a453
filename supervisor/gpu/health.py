"""GPU health as a pure function of readings, and the Xid catalogue.

``classify(reading, previous, thresholds)`` maps one ``GpuReading`` (or a
``GpuLost``) to ``healthy``, ``degraded`` or ``failed`` with the reasons, in
words. ``classify_xid(xid)`` says what one Xid means for the GPU and the job.
No I/O, no clock: unit-tested with tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from supervisor.gpu.backend import GpuLost, GpuReading

Health = Literal["healthy", "degraded", "failed"]
HEALTHY: Health = "healthy"
DEGRADED: Health = "degraded"
FAILED: Health = "failed"

# Clock-event reasons that mean the GPU is slowed by heat or by a hardware protection, not by a
# setting or by being idle (sw_power_cap is normal under full load and is deliberately absent).
DEFAULT_DEGRADED_THROTTLE_REASONS = ("hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
                                     "hw_power_brake_slowdown")


@dataclass(frozen=True)
class GpuThresholds:
    """Health thresholds; the daemon config exposes each field (``gpu.<name>``)."""

    temperature_degraded_c: float = 85.0
    # failed (and quarantined until it reads cool again) at this temperature; None: never for heat alone
    temperature_failed_c: float | None = None
    # failed at this many volatile uncorrectable ECC errors (they reset with the GPU)
    ecc_uncorrected_failed: int = 1
    # degraded when the volatile corrected count rose by at least this much since the previous reading
    ecc_corrected_increase_degraded: int = 10
    degraded_throttle_reasons: tuple[str, ...] = DEFAULT_DEGRADED_THROTTLE_REASONS
    # how long a "degraded" Xid (63, 92, NVLink5) keeps the GPU degraded
    xid_degraded_hold_s: float = 3600.0


def classify(reading: GpuReading | GpuLost, previous: GpuReading | None,
             thresholds: GpuThresholds) -> tuple[Health, list[str]]:
    """The health of one GPU from its latest reading (``previous``: the one before, for rates).

    Failed: lost, uncorrectable ECC errors, retired pages or remapped rows
    waiting for a reset, a failed row remap, above ``temperature_failed_c``
    (when set). Degraded: hot, clocks slowed by
    heat or hardware protection, correctable ECC errors rising fast. A field
    the GPU does not report (``None``) never counts against it.
    """
    if isinstance(reading, GpuLost):
        return FAILED, [reading.reason]
    failed: list[str] = []
    degraded: list[str] = []
    if reading.ecc_uncorrected is not None and reading.ecc_uncorrected >= thresholds.ecc_uncorrected_failed:
        failed.append(f"uncorrectable ECC errors: {reading.ecc_uncorrected}")
    if reading.retired_pages_pending:
        failed.append("retired pages pending (a reset is needed to retire them)")
    if reading.remapped_rows_pending:
        failed.append("row remapping pending (a reset is needed to remap)")
    if reading.remapped_rows_failure:
        failed.append("row remapping failed")
    hot = reading.temperature_c is not None and thresholds.temperature_failed_c is not None \
        and reading.temperature_c >= thresholds.temperature_failed_c
    if hot:
        failed.append(f"temperature {reading.temperature_c:.0f} C >= {thresholds.temperature_failed_c:.0f} C")
    elif reading.temperature_c is not None and reading.temperature_c >= thresholds.temperature_degraded_c:
        degraded.append(f"temperature {reading.temperature_c:.0f} C >= {thresholds.temperature_degraded_c:.0f} C")
    if reading.throttle_reasons:
        slow = sorted(set(reading.throttle_reasons) & set(thresholds.degraded_throttle_reasons))
        if slow:
            degraded.append(f"clocks slowed: {', '.join(slow)}")
    if (previous is not None and reading.ecc_corrected is not None and previous.ecc_corrected is not None
            and previous.uuid == reading.uuid):
        rise = reading.ecc_corrected - previous.ecc_corrected
        if rise >= thresholds.ecc_corrected_increase_degraded:
            degraded.append(f"correctable ECC errors rising: +{rise} (now {reading.ecc_corrected})")
    if failed:
        return FAILED, failed + degraded
    if degraded:
        return DEGRADED, degraded
    return HEALTHY, []


# --------------------------------------------------------------------------------------------- Xid catalogue
#
# Source: NVIDIA's Xid catalog for Ampere and newer GPUs, column "Resolution Bucket (Immediate
# Action)": https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html (the catalog
# spreadsheet, as mirrored in leptonai/gpud components/accelerator/nvidia/xid/catalog_generated.go,
# generated 2025-10-29). How we map its buckets:
#   RESET_GPU, RESTART_BM (reboot), RESTART_VM, WORKFLOW_XID_48 (double-bit ECC) and
#   WORKFLOW_NVLINK_ERR                                              -> GPU fault: failed + quarantine
#   RESTART_APP and WORKFLOW_XID_45 (the channel of a dying process)   -> application: the job's error
#   IGNORE with a hardware meaning (63 remap recorded, 92 high SBE rate) -> degraded, noted
#   everything else (IGNORE, CONTACT_SUPPORT for unused codes, unknown) -> informational
# Xid 43 ("GPU stopped processing", bucket IGNORE) is the channel reset after a user fault: recorded
# against the job, as the issue asks. NVLink5 Xids 144-150 need their intrinfo decoded to tell fatal
# from benign, which NVML's event does not carry: degraded, so an operator looks.

XidKind = Literal["gpu_fault", "application", "degraded", "info"]

XID_GPU_FAULT: dict[int, str] = {
    46: "GPU stopped processing (GPU timeout)",
    48: "double-bit ECC error",
    62: "internal micro-controller halt",
    64: "GPU memory remapping failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    95: "uncontained memory error",
    109: "context switch timeout",
    110: "security fault",
    119: "GSP RPC timeout",
    120: "GSP error",
    136: "link training failed",
    140: "unrecovered ECC error",
    143: "GPU initialization error",
    151: "key rotation error",
    155: "NVLink software-defined error",
    156: "resource retirement event (reset needed)",
    158: "GPU fatal timeout",
}

XID_APPLICATION: dict[int, str] = {
    8: "GPU stopped processing (channel idle timeout)",
    11: "invalid or corrupted push buffer stream",
    13: "graphics engine exception",
    25: "invalid or illegal push buffer stream",
    31: "GPU memory page fault",
    32: "invalid or corrupted push buffer stream",
    39: "copy engine exception",
    40: "copy engine exception",
    41: "copy engine exception",
    43: "GPU stopped processing (channel reset after a user fault)",
    45: "preemptive cleanup of a channel",
    60: "video processor exception",
    68: "NVDEC0 exception",
    69: "graphics engine class error",
    80: "corrupted data sent to GPU",
    94: "contained memory error (the process was stopped, the GPU is fine)",
    **{x: "copy engine exception" for x in (70, 71, 72, 75, 76, 77, 85, *range(126, 136))},
    **{x: "video/JPEG/OFA engine exception" for x in (82, 83, 84, 86, 88, 89, *range(96, 106), 139)},
}

XID_DEGRADED: dict[int, str] = {
    63: "GPU memory row remapping recorded",
    92: "high single-bit ECC error rate",
    **{x: "NVLink5 error (decode needed)" for x in range(144, 151)},
}


@dataclass(frozen=True)
class XidClass:
    """What one Xid means: ``kind`` and a short description."""

    xid: int
    kind: XidKind
    description: str

    @property
    def application(self) -> bool:
        """Recorded against the job on that GPU, not against the GPU."""
        return self.kind == "application"


def classify_xid(xid: int) -> XidClass:
    """The class of ``xid`` in NVIDIA's catalogue (see the table above)."""
    if xid in XID_GPU_FAULT:
        return XidClass(xid, "gpu_fault", XID_GPU_FAULT[xid])
    if xid in XID_APPLICATION:
        return XidClass(xid, "application", XID_APPLICATION[xid])
    if xid in XID_DEGRADED:
        return XidClass(xid, "degraded", XID_DEGRADED[xid])
    return XidClass(xid, "info", "informational")
