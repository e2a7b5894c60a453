"""Shared-server mode with real users: a root daemon, two local users created here, each with a job.

Each user runs ``supervisorctl`` through ``runuser``; the daemon knows them only
by the socket's peer credentials. Their trainers (the fake trainer) run as them.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.support.harness import REPO, SUPPORT, DaemonProc, fake_env, wait_for, write_config

pytestmark = pytest.mark.e2e

TOOLS = ("useradd", "userdel", "groupadd", "groupdel", "runuser")


def _why_not_here() -> str | None:
    """Why this machine cannot run the test (``None``: it can)."""
    if os.geteuid() != 0:
        return "needs root: it creates users and the daemon runs their jobs as them"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} (the passwd package)"
    return None


@dataclass
class User:
    name: str
    uid: int
    gid: int
    workdir: Path


def _interpreter_problem(user: str) -> str | None:
    """Why ``user`` cannot run this interpreter with our packages (``None``: they can): the venv and the
    checkout must be readable by other users (CI's clone under root's 0700 home is not)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)])}
    proc = subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c",
                           "import supervisor.attempt_monitor, omegaconf, psutil, fake_trainer"],
                          env=env, capture_output=True, text=True, timeout=60, cwd="/")
    if proc.returncode == 0:
        return None
    last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return f"another user cannot run {sys.executable} with {REPO} importable ({last}): clone and make the venv " \
           f"under a world-readable path to run this test"


@pytest.fixture
def shared(request: pytest.FixtureRequest) -> Iterator[tuple[Path, str, list[User], str]]:
    """A world-traversable base dir, an access group, two members and one non-member; all removed after."""
    why = _why_not_here()
    if why:
        pytest.skip(why)
    tag = secrets.token_hex(3)
    group, outsider = f"mlsv-g{tag}", f"mlsv-o{tag}"
    names = [f"mlsv-a{tag}", f"mlsv-b{tag}"]
    # pytest's tmp_path is under root's 0700 /tmp/pytest-of-root: the users could not reach their workdirs.
    base = Path(tempfile.mkdtemp(prefix="mlsv-shared-", dir="/tmp"))
    os.chmod(base, 0o755)
    created_users: list[str] = []
    created_group = False
    try:
        subprocess.run(["groupadd", group], check=True, capture_output=True)
        created_group = True
        users = []
        for name in [*names, outsider]:
            extra = ["-G", group] if name != outsider else []
            subprocess.run(["useradd", "-M", "-d", f"/nonexistent-{name}", "-s", "/usr/sbin/nologin", *extra, name],
                           check=True, capture_output=True)
            created_users.append(name)
            entry = pwd.getpwnam(name)
            workdir = base / name
            workdir.mkdir()
            os.chown(workdir, entry.pw_uid, entry.pw_gid)
            users.append(User(name, entry.pw_uid, entry.pw_gid, workdir))
        problem = _interpreter_problem(names[0])
        if problem:
            pytest.skip(problem)
        yield base, group, users, outsider
    finally:
        for name in created_users:
            uid = pwd.getpwnam(name).pw_uid
            for proc in psutil.process_iter(["uids"]):
                if proc.info["uids"] and proc.info["uids"].real == uid:
                    proc.kill()
            subprocess.run(["userdel", name], capture_output=True)
        if created_group:
            subprocess.run(["groupdel", group], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _ctl(daemon: DaemonProc, user: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``supervisorctl ARGS`` as ``user`` (runuser keeps our environment but HOME, USER, LOGNAME, SHELL)."""
    return subprocess.run(["runuser", "-u", user, "--", sys.executable, "-m", "supervisor.cli.ctl", *args],
                          env=daemon.env, cwd=cwd, capture_output=True, text=True, timeout=120)


def _ids(result: subprocess.CompletedProcess[str]) -> set[str]:
    assert result.returncode == 0, result.stderr
    return {job["id"] for job in json.loads(result.stdout)}


def _uids(pid: int) -> tuple[int, ...]:
    """Real, effective, saved and filesystem uid of ``pid``, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return tuple(int(v) for v in line.split()[1:])
    raise AssertionError(f"no Uid line for {pid}")


def test_each_user_sees_and_controls_only_their_own_jobs_which_run_as_them(
        shared: tuple[Path, str, list[User], str]) -> None:
    base, group, (alice, bob, _outsider), outsider = shared
    state = base / "state"
    daemon = DaemonProc(state, base, fake_env(state))
    daemon.start(f"access.group={group}")
    try:
        sock = state / "supervisor.sock"
        mode = os.stat(sock)
        assert (stat.S_IMODE(mode.st_mode), mode.st_gid) == (0o660, grp.getgrnam(group).gr_gid)
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o711
        assert stat.S_IMODE(os.stat(state / "supervisor.db").st_mode) & 0o077 == 0  # members cannot read it

        jobs: dict[str, str] = {}
        for user in (alice, bob):
            cfg = write_config(user.workdir, f"job-{user.name[-8:]}", steps=10**6, step_time=0.05, ckpt_every=20)
            os.chown(cfg, user.uid, user.gid)
            result = _ctl(daemon, user.name, user.workdir, "submit", str(cfg))
            assert result.returncode == 0, result.stderr
            jobs[user.name] = result.stdout.strip().splitlines()[-1]

        # each user's list (and status) shows only their own job; root, an admin, sees both
        for user in (alice, bob):
            assert _ids(_ctl(daemon, user.name, user.workdir, "list", "--json")) == {jobs[user.name]}
            assert _ids(_ctl(daemon, user.name, user.workdir, "status", "--json")) == {jobs[user.name]}
        assert set(jobs.values()) <= _ids(daemon.ctl("list", "--json"))

        # each trainer (and its attempt monitor) runs as its submitter, with the user's groups and home
        for user in (alice, bob):
            pid = daemon.live_pid(jobs[user.name], 1)
            assert _uids(pid) == (user.uid,) * 4
            trainer = psutil.Process(pid)
            assert trainer.gids().real == user.gid
            assert trainer.environ()["HOME"] == f"/nonexistent-{user.name}"
            assert trainer.environ()["USER"] == user.name
            assert _uids(trainer.parent().pid)[0] == user.uid  # the monitor: never root

        # the job dir is the daemon's (its lock and frozen config out of the owner's reach) and closed to others;
        # what the trainer writes is the owner's
        job_dir = Path(daemon.status(jobs[alice.name])["job_dir"])
        assert (job_dir.stat().st_uid, job_dir.stat().st_gid, stat.S_IMODE(job_dir.stat().st_mode)) == \
            (0, alice.gid, 0o750)
        assert (job_dir / "job.lock").stat().st_uid == 0
        assert (job_dir / "attempts" / "1").stat().st_uid == alice.uid
        ckpt = wait_for(lambda: next((job_dir / "checkpoints").glob("*.ckpt"), None), timeout=30, what="a checkpoint")
        assert ckpt.stat().st_uid == alice.uid
        peek = subprocess.run(["runuser", "-u", bob.name, "--", "ls", str(job_dir)], capture_output=True, text=True)
        assert peek.returncode != 0 and "ermission denied" in peek.stderr

        # bob cannot stop (or see, or read the logs of) alice's job: it does not exist for him
        alice_pid = daemon.live_pid(jobs[alice.name], 1)
        for args in (("stop", jobs[alice.name]), ("status", jobs[alice.name]), ("logs", jobs[alice.name]),
                     ("restart", jobs[alice.name])):
            refused = _ctl(daemon, bob.name, bob.workdir, *args)
            assert refused.returncode == 3, (args, refused.stdout, refused.stderr)  # job_not_found
            assert f"no job {jobs[alice.name]!r}" in refused.stderr
        assert daemon.status(jobs[alice.name])["state"] == "running"
        assert psutil.pid_exists(alice_pid) and _uids(alice_pid)[0] == alice.uid

        # a user who is not in the group cannot connect at all
        denied = _ctl(daemon, outsider, base, "list")
        assert denied.returncode != 0 and "ermission denied" in denied.stderr

        # alice stops her own job: it ends, and its trainer with it
        assert _ctl(daemon, alice.name, alice.workdir, "stop", jobs[alice.name]).returncode == 0
        daemon.wait_state(jobs[alice.name], "stopped", timeout=60)
        assert wait_for(lambda: not psutil.pid_exists(alice_pid) or
                        psutil.Process(alice_pid).status() == psutil.STATUS_ZOMBIE, timeout=30)
        assert daemon.status(jobs[bob.name])["state"] == "running"
        daemon.ctl("stop", jobs[bob.name])  # root may stop anyone's job
        daemon.wait_state(jobs[bob.name], "stopped", timeout=60)
    finally:
        if daemon.proc is not None:
            daemon.kill(signal.SIGTERM)
        daemon.kill_leftovers()
