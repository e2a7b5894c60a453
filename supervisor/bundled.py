"""Files the package ships beside its modules (package data): the example configs and the starter project.

They are found next to this module, so a wheel installed anywhere has them (``pyproject.toml``'s
``package-data`` lists them; ``tests/release/`` installs the wheel and reads them). The
repository's ``configs/`` is a link to ``examples/configs`` here. Standard library only.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The example job configs (also the web page's launch templates unless web.templates_dir says otherwise).
EXAMPLE_CONFIGS = PACKAGE_DIR / "examples" / "configs"
# What `ml-supervisor init` writes: the commented job config (its model file is trainer/examples/starter.py).
STARTER_DIR = PACKAGE_DIR / "starter"
