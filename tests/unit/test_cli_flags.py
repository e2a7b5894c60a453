"""Global flags in either position (issue 11, item 7): ``serve --state-dir X`` as unit files and people type it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.cli import ctl
from supervisor.cli import main as ml_main

CASES = [
    (ml_main.build_parser, ["--state-dir", "/x", "serve"]),
    (ml_main.build_parser, ["serve", "--state-dir", "/x"]),
    (ml_main.build_parser, ["serve", "--state-dir", "/x", "web.port=0"]),
    (ml_main.build_parser, ["run", "cfg.yaml", "trainer.max_epochs=1", "--state-dir", "/x"]),
    (ml_main.build_parser, ["run", "--state-dir", "/x", "cfg.yaml", "trainer.max_epochs=1"]),
    (ml_main.build_parser, ["validate", "--state-dir=/x", "cfg.yaml"]),
    (ctl.build_parser, ["--state-dir", "/x", "status"]),
    (ctl.build_parser, ["status", "--state-dir", "/x"]),
    (ctl.build_parser, ["stop", "job-1", "--state-dir", "/x"]),
    (ctl.build_parser, ["sweep", "list", "--state-dir", "/x"]),
]


@pytest.mark.parametrize(("build", "argv"), CASES, ids=[" ".join(argv) for _, argv in CASES])
def test_state_dir_is_read_before_or_after_the_subcommand(build: Callable[[], argparse.ArgumentParser],
                                                          argv: list[str]) -> None:
    assert build().parse_args(argv).state_dir == "/x"


def test_state_dir_after_the_subcommand_does_not_hide_one_given_before() -> None:
    assert ml_main.build_parser().parse_args(["--state-dir", "/a", "serve"]).state_dir == "/a"
    assert ctl.build_parser().parse_args(["status"]).state_dir is None
    assert ctl.build_parser().parse_args(["--state-dir", "/a", "status", "--state-dir", "/b"]).state_dir == "/b"


def test_supervisorctl_reaches_the_state_dir_named_after_the_subcommand(tmp_path: Path) -> None:
    # a real process: with no daemon there, the one-line error names the socket in *that* directory
    done = subprocess.run([sys.executable, "-m", "supervisor.cli.ctl", "status", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert str(tmp_path) in done.stderr, done.stderr
    assert "unrecognized arguments" not in done.stderr
