"""Where GPU readings come from: one interface (``types``), two implementations, and the choice.

``NvmlBackend`` (``nvml.py``) talks to the real NVIDIA Management Library.
``FakeNvmlBackend`` (``simulated.py``) reads a JSON file instead; it is the only
simulation the project accepts, selected with ``ML_SUPERVISOR_NVML=fake:FILE``.
Both return the same ``GpuReading`` and ``XidEvent`` values, so everything above
(health classification, the monitor, pre-flight) runs unchanged on either.
This module keeps ``open_backend`` and the names others import from here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from supervisor.gpu.nvml import NvmlBackend
from supervisor.gpu.simulated import FakeNvmlBackend
from supervisor.gpu.types import (
    THROTTLE_REASON_BITS,
    GpuBackend,
    GpuBackendError,
    GpuLost,
    GpuProcess,
    GpuReading,
    XidEvent,
    decode_throttle_reasons,
)

__all__ = [
    "ENV_VAR", "THROTTLE_REASON_BITS", "FakeNvmlBackend", "GpuBackend", "GpuBackendError", "GpuLost", "GpuProcess",
    "GpuReading", "NvmlBackend", "XidEvent", "decode_throttle_reasons", "open_backend",
]

log = logging.getLogger(__name__)

ENV_VAR = "ML_SUPERVISOR_NVML"


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
