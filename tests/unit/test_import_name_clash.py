"""The console scripts refuse to run next to another distribution that installs `supervisor` or `trainer`.

For real: the installed console scripts run in a fresh process, with a temporary site
directory on PYTHONPATH holding a fake distribution (a dist-info with METADATA and a
RECORD, as pip leaves it) that claims supervisord's `supervisor/processes/control.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor._entry import foreign_providers

BIN = Path(sys.executable).parent


def _fake_distribution(site: Path, name: str, version: str, record: list[str], top_level: str | None = None) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text("".join(f"{path},,\n" for path in [*record, f"{info.name}/RECORD"]))
    if top_level is not None:
        (info / "top_level.txt").write_text(top_level)


def _script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"console script {name} is not installed next to {sys.executable} (pip install -e .)")
    return str(path)


def _run(script: str, site: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run([_script(script), *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", ["ml-supervisor", "supervisorctl", "ml-supervisorctl"])
def test_supervisord_next_to_us_is_one_line_naming_it_and_the_fix(tmp_path: Path, script: str) -> None:
    _fake_distribution(tmp_path, "supervisor", "4.2.5",
                       ["supervisor/__init__.py", "supervisor/processes/control.py", "supervisor/rules/states.py"])
    proc = _run(script, tmp_path, "--help")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "'supervisor' is also provided by supervisor 4.2.5" in lines[0]
    assert "own virtual environment" in lines[0] and "python3 -m venv" in lines[0]
    assert lines[0].startswith(("ml-supervisor: error:", "supervisorctl: error:"))
    assert "usage" not in proc.stdout  # nothing ran


def test_a_trainer_package_declared_in_top_level_is_found(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, "trainer", "0.0.36", ["trainer/__init__.py", "trainer/trainer.py"],
                       top_level="trainer\n")
    proc = _run("supervisorctl", tmp_path, "--help")
    assert proc.returncode == 1
    assert "'trainer' is also provided by trainer 0.0.36" in proc.stderr


def test_an_unrelated_distribution_does_not_trip_the_check(tmp_path: Path) -> None:
    # a path that merely starts like ours, and a file named after it in a subfolder
    _fake_distribution(tmp_path, "supervisor-tools", "1.0",
                       ["supervisor_tools/__init__.py", "supervisor_tools/supervisor/processes/control.py"])
    proc = _run("supervisorctl", tmp_path, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: supervisorctl" in proc.stdout


def test_our_own_install_passes() -> None:
    assert foreign_providers() == []
    proc = _run("ml-supervisor", None, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: ml-supervisor" in proc.stdout


def test_the_check_runs_before_any_module_a_clash_could_replace(tmp_path: Path) -> None:
    # The entry module imports only the standard library: supervisord's own files at our
    # paths (process.py, states.py) must not be imported before the check has spoken.
    code = ("import sys\nimport supervisor._entry\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('supervisor', 'trainer')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "['supervisor', 'supervisor._entry']"
