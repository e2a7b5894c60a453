"""``ml-supervisor init DIR`` and ``ml-supervisor examples`` (no daemon, no torch): the files, the refusals.

The starter's run itself (3 epochs on a CPU, exit 0) is tests/release/test_wheel.py's, from the installed wheel.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from supervisor.bundled import EXAMPLE_CONFIGS, STARTER_DIR
from supervisor.cli.project import init_project, list_examples
from supervisor.config import load_job_config
from supervisor.errors import SupervisorError
from tests.support.harness import REPO

SECTIONS = ("name", "workdir", "env", "seed", "model", "data", "trainer", "checkpoint", "logger", "callbacks",
            "supervision", "ui")


def test_init_writes_a_commented_config_and_the_model_it_names(tmp_path: Path) -> None:
    config, model = init_project(tmp_path / "my project")
    assert (config.name, model.name) == ("job.yaml", "model.py")
    text = config.read_text()
    raw = yaml.safe_load(text)
    assert tuple(raw) == SECTIONS  # every section, in this order, each with its comments
    assert raw["name"] == "my-project" and raw["workdir"] == str(tmp_path / "my project")
    assert raw["model"]["class_path"] == "model.StarterModel" and raw["data"]["class_path"] == "model.StarterDataModule"
    assert text.count("\n#") + text.count("  # ") > 40
    cfg = load_job_config(config)  # valid as written: schema, durations, ui knobs
    assert cfg.trainer["accelerator"] == "cpu" and cfg.logger.wandb.mode == "offline"
    assert model.read_text() == (REPO / "trainer" / "examples" / "starter.py").read_text()
    assert "__NAME__" not in text and "__WORKDIR__" not in text


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    init_project(tmp_path)
    (tmp_path / "model.py").write_text("# mine")
    with pytest.raises(SupervisorError, match=r"job\.yaml already exists \(init --force overwrites it\)"):
        init_project(tmp_path)
    assert (tmp_path / "model.py").read_text() == "# mine"
    init_project(tmp_path, force=True)
    assert "class StarterModel" in (tmp_path / "model.py").read_text()


def test_init_in_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    done = subprocess.run([sys.executable, "-m", "supervisor.cli.main", "init", str(tmp_path / "file")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == f"ml-supervisor: error: {tmp_path / 'file'} is not a directory\n"


def test_the_starter_passes_the_import_check(tmp_path: Path) -> None:
    """``python -m trainer --check`` (what submit runs): the classes import and take the config's arguments."""
    config, _ = init_project(tmp_path / "proj")
    done = subprocess.run([sys.executable, "-m", "trainer", "--config", str(config), "--check"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_examples_are_the_package_s_own_files() -> None:
    found = {(e.kind, e.name): e for e in list_examples()}
    assert set(found) == {("job", "digits"), ("sweep", "digits")}
    assert found[("job", "digits")].path == EXAMPLE_CONFIGS / "digits.yaml"
    assert found[("job", "digits")].description.startswith("A small MLP on scikit-learn's bundled 8x8 digits")
    assert (REPO / "configs").resolve() == EXAMPLE_CONFIGS  # the checkout's configs/ is the same folder
    assert STARTER_DIR.parent == EXAMPLE_CONFIGS.parents[1]
