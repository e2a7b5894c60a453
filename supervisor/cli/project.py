"""``ml-supervisor examples`` (the bundled configs, with their installed paths) and ``ml-supervisor init DIR``.

``init`` writes a starter project a user edits: ``job.yaml``, a job config with every
section commented (the package's ``starter/job.yaml``), and ``model.py``, a small
LightningModule and DataModule (the text of ``trainer/examples/starter.py``), which
``ml-supervisor run DIR/job.yaml`` trains as it is on a CPU, from any folder: the config's
``workdir`` is the project's absolute path.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from supervisor.bundled import EXAMPLE_CONFIGS, STARTER_DIR
from supervisor.config.safe_yaml import load_yaml, read_config_text
from supervisor.errors import ConfigError, SupervisorError

STARTER_CONFIG = "job.yaml"
STARTER_MODEL = "model.py"
_STARTER_MODEL_MODULE = "trainer.examples.starter"  # its file is copied, never imported here (no torch)


@dataclass(frozen=True)
class Example:
    """One bundled config: a job (a launch template when it has ``ui``) or a sweep."""

    name: str
    kind: str  # "job" | "sweep"
    path: Path
    description: str


def list_examples(folder: Path = EXAMPLE_CONFIGS) -> list[Example]:
    """The bundled job configs, then the sweeps, each sorted by file name."""
    found = []
    for kind, where in (("job", folder), ("sweep", folder / "sweeps")):
        for path in sorted(where.glob("*.yaml")):
            found.append(Example(name=path.stem, kind=kind, path=path, description=_description(path)))
    return found


def _description(path: Path) -> str:
    """The ``ui.description`` (or title) of a job config; a sweep's first comment line."""
    try:
        text = read_config_text(path)
        raw = load_yaml(text, source=str(path))
    except ConfigError:
        return ""
    ui = raw.get("ui") if isinstance(raw, dict) else None
    if isinstance(ui, dict) and (ui.get("description") or ui.get("title")):
        return str(ui.get("description") or ui.get("title"))
    first = next((ln for ln in text.splitlines() if ln.startswith("#")), "")
    return first.lstrip("# ").strip()


def init_project(directory: str | Path, *, force: bool = False) -> list[Path]:
    """Write the starter project into ``directory`` (made if missing); the files written.

    Refuses (one line) to overwrite a file unless ``force``.
    """
    root = Path(directory).expanduser().absolute()
    targets = [root / STARTER_CONFIG, root / STARTER_MODEL]
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise SupervisorError(f"{existing[0]} already exists (init --force overwrites it)")
    if root.exists() and not root.is_dir():
        raise SupervisorError(f"{root} is not a directory")
    name = re.sub(r"[^A-Za-z0-9._-]", "-", root.name).lstrip("._-")[:64] or "starter"
    config = (STARTER_DIR / STARTER_CONFIG).read_text(encoding="utf-8")
    # json.dumps: a valid YAML double-quoted scalar for any path
    config = config.replace("__NAME__", name).replace("__WORKDIR__", json.dumps(str(root)))
    model = _starter_model_path().read_text(encoding="utf-8")
    try:
        root.mkdir(parents=True, exist_ok=True)
        for path, text in zip(targets, (config, model), strict=True):
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise SupervisorError(f"cannot write the starter project: {exc.strerror or exc}"
                              f"{f' ({exc.filename})' if exc.filename else ''}") from None
    return targets


def _starter_model_path() -> Path:
    spec = importlib.util.find_spec(_STARTER_MODEL_MODULE)  # imports trainer/__init__ and trainer/examples (no torch)
    if spec is None or spec.origin is None:
        raise SupervisorError(f"the starter model ({_STARTER_MODEL_MODULE}) is missing from this installation")
    return Path(spec.origin)
