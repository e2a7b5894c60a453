"""A standby must not initialise CUDA before its handover (the handover names its GPUs).

CUDA reads ``CUDA_VISIBLE_DEVICES`` once, when the driver loads; a standby in which
something loaded it would run on the GPUs of its empty, preparing environment.
``cuda_touched`` finds the driver library in the process's memory map; here a copy of an
ordinary shared library named ``libcuda.so.1`` stands in for the driver (no GPU here),
loaded for real with ctypes in a fresh interpreter.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.standby import cuda_touched

REPO = Path(__file__).resolve().parents[2]
PROBE = "from trainer.standby import cuda_touched; import sys; {load}print(cuda_touched())"


def _probe(load: str = "") -> str:
    # As the runner starts a standby: no GPU yet, and NVML answers torch.cuda.is_available().
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTORCH_NVML_BASED_CUDA_CHECK="1")
    done = subprocess.run([sys.executable, "-c", PROBE.format(load=load)], cwd=REPO, capture_output=True, text=True,
                          timeout=180, check=True, env=env)
    return done.stdout.strip()


def test_what_a_standby_imports_and_asks_does_not_load_the_cuda_driver() -> None:
    """On a GPU node (bench/gpu/check.sh runs this file there) this is the claim that matters."""
    load = "import torch, pytorch_lightning; torch.cuda.is_available(); torch.cuda.device_count(); "
    assert _probe(load) == "None"


def test_a_process_that_loaded_the_driver_library_is_caught(tmp_path: Path) -> None:
    found = ctypes.util.find_library("m")
    if found is None:
        pytest.skip("no libm to stand in for the CUDA driver library")
    source = next((p for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64",
                               "/lib/aarch64-linux-gnu") if (p := Path(d) / found).exists()), None)
    if source is None:
        pytest.skip(f"{found} not found in the usual library directories")
    fake_driver = tmp_path / "libcuda.so.1"
    shutil.copy(source, fake_driver)
    assert _probe(f"import ctypes; ctypes.CDLL({str(fake_driver)!r}); ") == "the CUDA driver, libcuda, is loaded"


def test_the_memory_map_is_read_for_the_driver_library_only() -> None:
    line = "7f3c2a000000-7f3c2a200000 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/{}\n"
    assert cuda_touched(line.format("libcuda.so.535.104.05")) is not None
    assert cuda_touched(line.format("libcudart.so.12") + line.format("libnvidia-ml.so.1")) is None
