"""The daemon never imports torch, Lightning or wandb (memory, start-up time, and a crashed CUDA
library must never take the daemon down). Checked in a fresh interpreter over every daemon module."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import supervisor


def test_no_daemon_module_imports_torch_lightning_or_wandb() -> None:
    modules = sorted(m.name for m in pkgutil.walk_packages(supervisor.__path__, "supervisor.")
                     if m.name != "supervisor.alerts.wandb_worker")  # the one module that must import wandb
    assert "supervisor.core" in modules and "supervisor.web.app" in modules
    code = (f"import importlib, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'pytorch_lightning', 'lightning', 'wandb')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
