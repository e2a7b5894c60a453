"""The two commands as a user types them: `ml-supervisor run` in the foreground (no daemon) and
`ml-supervisor install-systemd`, as real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from supervisor.api.client import Client
from tests.support.harness import DaemonProc, fake_env, wait_for, write_config
from tests.support.resume_oracle import best_not_newest

pytestmark = pytest.mark.e2e


def _run(tmp_path: Path, *args: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "supervisor.cli.main", "run", *args],
                            env=fake_env(tmp_path / "state"), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)  # type: ignore[call-overload]


def test_foreground_run_restarts_from_best_and_exits_0(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, steps=40, step_time=0.03, ckpt_every=5, crash_at=12)
    proc = _run(tmp_path, str(cfg))
    # supervisorctl sees the foreground run while it runs
    jobs = wait_for(lambda: _list(tmp_path), timeout=30, what="the foreground run's socket")
    assert jobs[0]["name"] == "fake"
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "restart" in out and "boom at step 12" in out
    assert "completed (finished)" in out
    job_dir = next((tmp_path / "state" / "jobs").iterdir())
    row = next(line for line in out.splitlines() if line.split()[:1] == ["2"])  # attempt 2's history row
    assert row.split()[-1] == Path(best_not_newest(job_dir, 2)).name == "step=5.ckpt"  # the best, not last.ckpt


def test_foreground_run_of_a_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, supervision={"max_restarts": -1})
    proc = _run(tmp_path, str(cfg))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip() == f"ml-supervisor: error: {cfg}: supervision.max_restarts: must be at least 0; got -1"
    assert not (tmp_path / "state" / "jobs").exists() or not any((tmp_path / "state" / "jobs").iterdir())


def test_foreground_run_that_gives_up_exits_1(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, steps=20, step_time=0.01, crash_at=2, faults_on=[1, 2, 3],
                       supervision={"no_progress_attempts": 2, "backoff": {"initial": "0.1s"}})
    proc = _run(tmp_path, str(cfg))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "failed (no_progress)" in out


def test_ctrl_c_stops_the_job_gracefully_and_exits_130(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, steps=10**6, step_time=0.02, ckpt_every=5)
    proc = _run(tmp_path, str(cfg))
    wait_for(lambda: (jobs := _list(tmp_path)) and jobs[0]["global_step"] > 5, timeout=30, what="progress")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "stopped (user)" in out


def test_install_systemd_user_writes_the_unit_and_says_how_to_start_it(tmp_path: Path) -> None:
    env = fake_env(tmp_path / "state", XDG_CONFIG_HOME=str(tmp_path / "config"))
    proc = subprocess.run([sys.executable, "-m", "supervisor.cli.main", "install-systemd", "--user"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    unit = tmp_path / "config" / "systemd" / "user" / "ml-supervisor.service"
    text = unit.read_text()
    assert f"ExecStart={sys.executable} -m supervisor.cli.main serve" in text
    assert "Type=notify" in text and "KillMode=process" in text
    assert "systemctl --user" in proc.stdout and "enable" in proc.stdout


def _list(tmp_path: Path) -> list[dict] | None:
    try:
        return Client(tmp_path / "state", timeout=5).call("list") or None
    except Exception:
        time.sleep(0.1)
        return None


def test_two_daemons_on_one_machine_both_serve_their_page(tmp_path: Path) -> None:
    # Two users (two state dirs), default web.port=auto: the second one does not lose its page;
    # `supervisorctl web-url` prints each daemon's real address.
    daemons = [DaemonProc(tmp_path / name / "state", tmp_path, fake_env(tmp_path / name / "state"))
               for name in ("alice", "bob")]
    try:
        for d in daemons:
            d.start("web.enabled=true")
        urls = [d.ctl("web-url").stdout.strip() for d in daemons]
        assert urls[0] != urls[1]
        for url in urls:
            assert url.startswith("http://127.0.0.1:") and "#token=" in url
            page, token = url.split("#token=")
            assert httpx.get(page + "api/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=10).json() == []
    finally:
        for d in daemons:
            if d.proc is not None:
                d.kill(signal.SIGTERM)


def test_a_bad_web_port_is_one_line_naming_the_key(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "supervisor.cli.main", "serve", "web.port=soon"],
                          env=fake_env(tmp_path / "state"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("ml-supervisor: error: daemon settings: web.port: expected auto or a port "
                                   "number 0-65535, got 'soon'")
