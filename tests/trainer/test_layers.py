"""The trainer's layers (``lint-imports`` checks the imports): every module has a layer, and the top stays light.

The layers contract in pyproject.toml names modules, not the ``trainer`` container
(``trainer.inspect.cli`` is an entry point inside a package of tools), so a new
module would go unchecked until named: the first test says which. The second
checks what import-linter cannot, that the modules a trainer process starts with
import no torch (signal handlers and the first heartbeat come before that import).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONTRACT = "the trainer in layers: entry points on top, library at the bottom"
# Packages whose modules sit in different layers: their __init__ can be named by no layer.
UNLAYERED = {"trainer", "trainer.inspect"}
TORCH_FREE = ("trainer", "trainer.cli", "trainer.zygote", "trainer.inspect", "trainer.inspect.cli",
              "trainer.standby", "trainer.attempt", "trainer.job", "trainer.build")


def _layer_modules() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["name"] == CONTRACT)
    return [name.strip().strip("()") for layer in contract["layers"] for name in re.split(r"[:|]", layer)]


def _trainer_modules() -> list[str]:
    modules = []
    for path in sorted((REPO / "trainer").rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules.append(".".join(parts))
    return modules


def test_every_trainer_module_is_in_a_layer() -> None:
    named = _layer_modules()
    unnamed = [m for m in _trainer_modules()
               if m not in UNLAYERED and not any(m == n or m.startswith(n + ".") for n in named)]
    assert not unnamed, f"add these to a layer of {CONTRACT!r} in pyproject.toml: {unnamed}"


def test_the_layers_name_only_modules_that_exist() -> None:
    assert set(_layer_modules()) <= set(_trainer_modules())


def test_what_a_trainer_process_starts_with_imports_no_torch() -> None:
    probe = (f"import importlib, sys\nfor name in {list(TORCH_FREE)!r}:\n"
             "    importlib.import_module(name)\n"
             "print(sorted(m for m in ('torch', 'pytorch_lightning', 'lightning_fabric', 'wandb', 'numpy') "
             "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
