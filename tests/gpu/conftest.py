"""Shared helpers for the GPU tests: a simulated NVML file the tests edit as an operator would."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from supervisor.gpu.backend import FakeNvmlBackend


def fake_gpu(index: int, **fields: Any) -> dict[str, Any]:
    """One GPU of the simulated NVML file, healthy unless ``fields`` say otherwise."""
    gpu: dict[str, Any] = {
        "index": index, "uuid": f"GPU-fake-{index}", "name": "Fake H100", "memory_total_mib": 81559,
        "memory_used_mib": 0, "temperature_c": 40, "ecc_uncorrected": 0, "retired_pages_pending": False,
        "lost": False, "xid": [],
    }
    gpu.update(fields)
    return gpu


class FakeGpuFile:
    """The ``ML_SUPERVISOR_NVML=fake:FILE`` file; every change is an atomic replace."""

    def __init__(self, path: Path, count: int) -> None:
        self.path = path
        self.gpus = [fake_gpu(i) for i in range(count)]
        self.write()

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"gpus": self.gpus}))
        os.replace(tmp, self.path)

    def set(self, index: int, **fields: Any) -> None:
        self.gpus[index].update(fields)
        self.write()

    def add_xid(self, index: int, xid: int) -> None:
        self.gpus[index]["xid"].append(xid)
        self.write()

    def backend(self) -> FakeNvmlBackend:
        return FakeNvmlBackend(self.path, xid_poll_s=0.01)


@pytest.fixture
def gpu_file(tmp_path: Path) -> FakeGpuFile:
    """A simulated node with two healthy GPUs."""
    return FakeGpuFile(tmp_path / "nvml.json", 2)
