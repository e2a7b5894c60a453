"""A real daemon driving the fake trainer, for tests and benchmarks (no pytest needed here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import yaml

from supervisor.api.client import Client
from tests.support.resume_oracle import resume_for

REPO = Path(__file__).resolve().parents[2]
SUPPORT = REPO / "tests" / "support"


def fake_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for a daemon (or CLI) that runs the fake trainer on ``state_dir``."""
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(REPO)]),
        "ML_SUPERVISOR_STATE_DIR": str(state_dir),
        "ML_SUPERVISOR_TRAINER_MODULE": "fake_trainer",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    })
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra)
    return env


def real_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for a daemon that runs the real trainer (``python -m trainer``) on ``state_dir``."""
    env = fake_env(state_dir, **extra)
    env.pop("ML_SUPERVISOR_TRAINER_MODULE")
    env["PYTHONPATH"] = str(REPO)
    return env


def write_config(directory: Path, name: str = "fake", *, supervision: dict[str, Any] | None = None,
                 **init_args: Any) -> Path:
    """A fake-trainer job config; ``init_args`` drive the fake (see tests/support/fake_trainer.py)."""
    cfg = {
        "name": name,
        "model": {"class_path": "fake.Model", "init_args": init_args},
        "data": {"class_path": "fake.Data"},
        "logger": {"wandb": {"mode": "disabled"}},
        "supervision": {"backoff": {"initial": "1s", "max": "2s"}, "stop_grace": "5s", **(supervision or {})},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def best_left_by(manifest: Path, n: int) -> str | None:
    """The best checkpoint as attempt ``n`` left the manifest: what a ``best`` resume of attempt n+1 takes.

    Read from the manifest's lines of attempts up to ``n`` (the manifest is append-only and a later attempt
    writes only once every process of ``n`` is gone), so a successor that is already training (a standby
    starts within a second) and saving cannot change the answer. Ranked by the tests' own rule
    (``resume_oracle``), not the product's.
    """
    return resume_for(manifest, n + 1)


def standby_processes(state_dir: Path) -> list[int]:
    """Pids of the processes started as standbys for jobs of ``state_dir`` (monitor and trainer, promoted or
    not): their command line has ``--standby`` and a path in the state dir."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if "--standby" in cmdline and any(str(state_dir) in part for part in cmdline):
            found.append(proc.info["pid"])
    return found


def zygote_processes(state_dir: Path) -> list[psutil.Process]:
    """The live zygotes (``python -m trainer.zygote``) of jobs of ``state_dir``: a path of it in their command
    line. A zombie is gone (only its exit status is left)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        try:
            if cmdline[1:3] == ["-m", "trainer.zygote"] and any(str(state_dir) in arg for arg in cmdline) \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def daemon_with_site(tmp_path: Path, sitecustomize: str) -> DaemonProc:
    """A daemon (not started) on ``tmp_path/state`` running the fake trainer, whose Python processes import
    ``sitecustomize`` (its source) first: how a test plants a thread, or a wait, in a zygote."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(sitecustomize)
    state, work = tmp_path / "state", tmp_path / "work"
    work.mkdir()
    env = fake_env(state)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    return DaemonProc(state, work, env)


def process_gone(pid: int, timeout_s: float = 5.0) -> bool:
    """Whether ``pid`` exits (or is a zombie) within ``timeout_s``; False if it is still running then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False

class DaemonProc:
    """A real ``ml-supervisor serve`` process on its own state dir, plus CLI helpers."""

    def __init__(self, state_dir: Path, workdir: Path, env: dict[str, str], python: str = sys.executable) -> None:
        self.python = python  # the daemon's interpreter, and so its attempt monitors'
        self.state_dir = state_dir
        self.workdir = workdir
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir.parent / "daemon.log"

    def start(self, *settings: str, **env: str) -> None:
        self.env.update(env)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.python, "-m", "supervisor.cli.main", "serve", "tick_interval=0.5", "web.enabled=false",
                 *settings],
                env=self.env, cwd=self.workdir, stdout=log, stderr=log, start_new_session=True)
        # in-process (no interpreter start per poll: seconds on a loaded box, and the polls add to the load);
        # a generous deadline: a daemon's imports took over 30 s with the suite's workers and a soak on 2 cores
        proc = self.proc

        def answering() -> bool:
            if proc.poll() is not None:  # no use waiting for a daemon that is gone
                raise AssertionError(f"the daemon exited ({proc.returncode}): {self.log.read_text()[-2000:]}")
            return self.client().available()

        wait_for(answering, timeout=120, what="the daemon to answer")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.proc = None

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.python, "-m", "supervisor.cli.ctl", *args], env=self.env, cwd=self.workdir,
                              capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"supervisorctl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def ctl_ok(self, *args: str) -> bool:
        return self.ctl(*args, check=False).returncode == 0

    def submit(self, config: Path, *overrides: str) -> str:
        return self.ctl("submit", str(config), *overrides).stdout.strip().splitlines()[-1]

    def client(self) -> Client:
        return Client(self.state_dir)

    def kill_leftovers(self) -> None:
        """Kill any attempt monitor or trainer still alive under this state dir (tests must not leak)."""
        import psutil

        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
            except (psutil.Error, TypeError):
                continue
            if str(self.state_dir) in cmdline:
                try:
                    os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def status(self, job: str) -> dict[str, Any]:
        """The job's status object, through the API in-process (fast enough to poll)."""
        return Client(self.state_dir).call("status", job=job)

    def wait_state(self, job: str, *states: str, timeout: float = 60.0) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def reached() -> bool:
            found.update(self.status(job))
            return found["state"] in states

        try:
            wait_for(reached, timeout=timeout, interval=0.2, what=f"{job} to reach {states}")
        except AssertionError:
            tail = self.log.read_text()[-3000:]
            raise AssertionError(f"{job} is {found.get('state')}, not {states}; daemon log:\n{tail}") from None
        return found

    def live_pid(self, job: str, n: int, timeout: float = 120.0) -> int:
        """The trainer pid of the job's attempt ``n`` once it runs (waits for it)."""
        def pid() -> int | None:
            attempts = self.status(job)["attempts"]
            ok = len(attempts) >= n and attempts[n - 1]["pid"] and attempts[n - 1]["ended_at"] is None
            return attempts[n - 1]["pid"] if ok else None

        return int(wait_for(pid, timeout=timeout, what=f"attempt {n} running"))
