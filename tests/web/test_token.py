"""The web token (owner-only, kept across restarts) and the address `supervisorctl web-url` prints."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.errors import DaemonUnavailable
from supervisor.web.token import (
    endpoint_path,
    load_or_create_token,
    page_url,
    read_token,
    read_web_url,
    remove_endpoint,
    token_path,
    write_endpoint,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_token_is_made_once_owner_only_and_kept(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path)
    assert len(token) >= 40 and token.isprintable()
    assert _mode(token_path(tmp_path)) == 0o600
    assert load_or_create_token(tmp_path) == token == read_token(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name != "web-token"]  # no temporary file left


def test_a_readable_token_file_is_made_owner_only_and_a_short_one_replaced(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path)
    os.chmod(token_path(tmp_path), 0o644)
    assert load_or_create_token(tmp_path) == token
    assert _mode(token_path(tmp_path)) == 0o600
    token_path(tmp_path).write_text("short\n")
    assert read_token(tmp_path) is None
    fresh = load_or_create_token(tmp_path)
    assert fresh != token and len(fresh) >= 40


def test_two_processes_racing_for_the_first_token_agree(tmp_path: Path) -> None:
    code = "import sys; from supervisor.web.token import load_or_create_token; print(load_or_create_token(sys.argv[1]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    tokens = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert tokens == {read_token(tmp_path)}


def test_page_url_puts_the_token_in_the_fragment() -> None:
    assert page_url("127.0.0.1", 8742, "abc") == "http://127.0.0.1:8742/#token=abc"
    assert page_url("::1", 80) == "http://[::1]:80/"
    assert page_url("0.0.0.0", 8742).startswith("http://") and "0.0.0.0" not in page_url("0.0.0.0", 8742)


def test_web_url_reads_the_endpoint_and_the_token(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="the daemon is not running"):
        read_web_url(tmp_path)
    token = load_or_create_token(tmp_path)
    write_endpoint(tmp_path, "127.0.0.1", 51234)
    assert _mode(endpoint_path(tmp_path)) == 0o600
    assert read_web_url(tmp_path) == f"http://127.0.0.1:51234/#token={token}"
    # a dead daemon's leftover file is not taken for a running page
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    data = json.loads(endpoint_path(tmp_path).read_text())
    endpoint_path(tmp_path).write_text(json.dumps({**data, "pid": int(dead.stdout)}))
    with pytest.raises(DaemonUnavailable, match="is gone"):
        read_web_url(tmp_path)
    remove_endpoint(tmp_path)
    remove_endpoint(tmp_path)
    assert not endpoint_path(tmp_path).exists()
