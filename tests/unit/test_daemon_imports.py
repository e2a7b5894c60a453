"""The daemon never imports torch, Lightning, wandb or Optuna (memory, start-up time, and a crashed CUDA
library must never take the daemon down). Checked in a fresh interpreter over every daemon module."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import supervisor


def test_no_daemon_module_imports_torch_lightning_or_wandb() -> None:
    modules = sorted(m.name for m in pkgutil.walk_packages(supervisor.__path__, "supervisor.")
                     # the worker processes' own modules: wandb for alerts, Optuna for sweeps
                     if m.name not in ("supervisor.alerts.wandb_worker", "supervisor.sweep.worker",
                                       "supervisor.sweep.search"))
    assert "supervisor.core" in modules and "supervisor.web.app" in modules and "supervisor.sweep.ops" in modules
    code = (f"import importlib, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'pytorch_lightning', 'lightning', 'wandb', 'optuna')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
