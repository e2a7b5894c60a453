"""Which GPUs an attempt gets, and the environment that hands them over. Pure functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def allocate(n: int, candidates: Sequence[int], busy: Mapping[int, str]) -> list[int] | None:
    """``n`` GPUs from ``candidates`` (healthy, not quarantined) that no job holds (``busy``: index -> job id).

    Lowest indices first, so placements are predictable. ``[]`` for ``n == 0``
    (a CPU job); ``None`` when too few are free (the job stays queued).
    """
    if n < 0:
        raise ValueError(f"cannot allocate {n} GPUs")
    free = sorted({index for index in candidates if index not in busy})
    if len(free) < n:
        return None
    return free[:n]


def cuda_environment(indices: Sequence[int]) -> dict[str, str]:
    """The environment that gives a trainer exactly ``indices`` (NVML indices).

    NVML numbers GPUs in PCI bus order while CUDA, by default, puts the
    fastest first: ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` makes CUDA use NVML's
    numbering, so ``CUDA_VISIBLE_DEVICES`` names the GPUs we checked. An empty
    list hides every GPU (a CPU job must not grab one by accident).
    """
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in indices),
    }
