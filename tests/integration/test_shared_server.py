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
import sysconfig
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


@dataclass
class Interpreter:
    """A Python, and the ``PYTHONPATH`` (plus loader path) under which it imports our packages, for any user."""

    python: str
    env: dict[str, str]


def _interpreter_problem(user: str, interp: Interpreter) -> str | None:
    """Why ``user`` cannot run ``interp`` with our packages (``None``: they can)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **interp.env}
    proc = subprocess.run(["runuser", "-u", user, "--", interp.python, "-c",
                           "import supervisor.processes.attempt_monitor, omegaconf, psutil, fake_trainer"],
                          env=env, capture_output=True, text=True, timeout=60, cwd="/")
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]


def _bind(source: str | Path, target: Path, mounts: list[Path]) -> None:
    target.mkdir(parents=True)
    subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(target)], check=True, capture_output=True)
    mounts.append(target)
    if not os.statvfs(target).f_flag & os.ST_RDONLY:  # the cleanup's rmtree must never reach the real files
        raise RuntimeError(f"the bind mount {target} is writable")


def _interpreter_for_users(base: Path, user: str, mounts: list[Path]) -> Interpreter:
    """An interpreter ``user`` can run with this checkout importable.

    Ours as it is when the user can reach it. Often they cannot: CI clones, and
    pyenv installs Python, under root's 0700 home. Then the Python install, the
    venv's site-packages and the checkout are bind-mounted (read-only) under
    ``base``, which users can traverse, and run from there; ``mounts`` collects
    what to unmount.
    """
    plain = Interpreter(sys.executable, {"PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)])})
    if _interpreter_problem(user, plain) is None:
        return plain
    view = base / "view"
    _bind(sys.base_prefix, view / "python", mounts)
    _bind(sysconfig.get_paths()["purelib"], view / "site", mounts)
    _bind(REPO, view / "repo", mounts)
    executable = Path(os.path.realpath(sys.executable)).relative_to(os.path.realpath(sys.base_prefix))
    mirrored = view / "repo" / SUPPORT.relative_to(REPO)
    return Interpreter(str(view / "python" / executable), {
        "PYTHONPATH": os.pathsep.join([str(mirrored), str(view / "repo"), str(view / "site")]),
        # a shared libpython is found by an absolute RPATH into the install; users need the mirrored one
        "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(view / "python" / "lib"),
                                                        os.environ.get("LD_LIBRARY_PATH")])),
    })


@pytest.fixture
def shared(request: pytest.FixtureRequest) -> Iterator[tuple[Path, str, list[User], str, Interpreter]]:
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
    mounts: list[Path] = []
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
        try:
            interp = _interpreter_for_users(base, names[0], mounts)
        except (subprocess.CalledProcessError, RuntimeError) as exc:
            pytest.skip(f"other users cannot reach {sys.executable} or {REPO}, and bind-mounting them failed: {exc}")
        problem = _interpreter_problem(names[0], interp)
        if problem:
            pytest.skip(f"another user cannot run {interp.python} with {REPO} importable: {problem}")
        yield base, group, users, outsider, interp
    finally:
        for name in created_users:
            uid = pwd.getpwnam(name).pw_uid
            for proc in psutil.process_iter(["uids"]):
                if proc.info["uids"] and proc.info["uids"].real == uid:
                    proc.kill()
            subprocess.run(["userdel", name], capture_output=True)
        if created_group:
            subprocess.run(["groupdel", group], capture_output=True)
        unmounted = all([subprocess.run(["umount", str(m)], capture_output=True).returncode == 0
                         for m in reversed(mounts)])
        if unmounted:  # never rmtree through a mount of the checkout or the Python install
            shutil.rmtree(base, ignore_errors=True)


def _ctl(daemon: DaemonProc, user: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``supervisorctl ARGS`` as ``user`` (runuser keeps our environment but HOME, USER, LOGNAME, SHELL)."""
    return subprocess.run(["runuser", "-u", user, "--", daemon.python, "-m", "supervisor.cli.ctl", *args],
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
        shared: tuple[Path, str, list[User], str, Interpreter]) -> None:
    base, group, (alice, bob, _outsider), outsider, interp = shared
    state = base / "state"
    daemon = DaemonProc(state, base, fake_env(state, **interp.env), python=interp.python)
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
