"""Fixtures for the web tests: a real ``Supervisor`` (in this process, its loop in a thread) on a tmp
state dir, driving real trainer processes, with the web app over its ``Operations``."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from supervisor.api.ops import Operations
from supervisor.core import Supervisor
from supervisor.settings import DaemonSettings
from supervisor.web.app import create_app
from supervisor.web.server import WebServer
from tests.support.harness import REPO, SUPPORT, wait_for

TOKEN = "test-token-" + "x" * 40
# Debian's Chromium, driven by Playwright (no browser download); flags that keep it off this box's closed network.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# A 2-core CI box under load: importing Lightning alone can take 20 s, twice (import check, then the run).
RUN_TIMEOUT_MS = 300_000
TERMINAL = ("completed", "failed", "stopped")


def fake_template(name: str = "fake", *, knobs: list[dict[str, Any]] | None = None, **init_args: Any
                  ) -> dict[str, Any]:
    """A fake-trainer job config with a ``ui`` section (see tests/support/fake_trainer.py for init_args)."""
    args = {"steps": 20, "step_time": 0.01, "ckpt_every": 5, **init_args}
    return {
        "name": name,
        "model": {"class_path": "fake.Model", "init_args": args},
        "data": {"class_path": "fake.Data"},
        "logger": {"wandb": {"mode": "disabled"}},
        "supervision": {"backoff": {"initial": "1s", "max": "2s"}, "stop_grace": "5s", "budget": "1h"},
        "ui": {
            "title": "Fake trainer",
            "description": "steps of a fake trainer",
            "knobs": knobs if knobs is not None else [
                {"key": "model.init_args.steps", "label": "Steps", "type": "int", "min": 1, "max": 100000},
                {"key": "model.init_args.step_time", "label": "Step time", "choices": [0.01, 0.05, 0.2]},
                {"key": "supervision.budget", "label": "Budget", "choices": ["5m", "1h", "24h"]},
                {"key": "checkpoint.filename", "label": "Filename", "type": "str"},
                {"key": "model.init_args.check_error", "label": "Import check",
                 "choices": [None, "cannot import fake.Model"], "labels": ["passes", "fails"]},
            ],
        },
    }


@dataclass
class WebEnv:
    """A supervisor, its operations, the app served on a real port, and HTTP clients with (``client``) and
    without (``anon``) the token."""

    sup: Supervisor
    ops: Operations
    templates: Path
    server: WebServer
    client: httpx.Client
    anon: httpx.Client
    gpus: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def write_template(self, name: str, config: dict[str, Any]) -> Path:
        path = self.templates / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def wait_state(self, job: str, *states: str, timeout: float = 60.0) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def reached() -> bool:
            found.update(self.client.get(f"/api/jobs/{job}").json())
            return found["state"] in states

        wait_for(reached, timeout=timeout, interval=0.1, what=f"{job} to reach {states} (is {found.get('state')})")
        return found


def start_supervisor(state: Path, trainer_module: str) -> Supervisor:
    """A real core on ``state``, its loop running in a thread (as ``Daemon.start`` runs it)."""
    sup = Supervisor(DaemonSettings(state_dir=str(state), trainer_module=trainer_module, tick_interval=0.2,
                                    check_timeout=120))
    sup.open()
    sup.start_thread()
    return sup


def stop_supervisor(sup: Supervisor) -> None:
    """Stop every job still alive (tests leak no trainer), then the core."""
    ops = Operations(sup)
    for job in ops.op_list(all=False):
        try:
            ops.op_stop(job["id"])
        except Exception:  # it may have ended meanwhile
            pass
    try:
        wait_for(lambda: not ops.op_list(all=False), timeout=20, what="jobs to stop")
    finally:
        sup.close()
        kill_leftovers(sup.state_dir)


def kill_leftovers(state: Path) -> None:
    """Safety net: kill any monitor or trainer still running for ``state``."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if str(state) in cmdline and proc.pid != os.getpid():
            try:
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def fake_trainer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trainers started from this process find the fake trainer and the repo (and never go online)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SUPPORT), str(REPO)]))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def make_web(tmp_path: Path, fake_trainer_env: None) -> Iterator[Callable[..., WebEnv]]:
    """Build a ``WebEnv`` over the fake trainer; ``gpus``: what the GPU callable returns (None: no NVML)."""
    made: list[WebEnv] = []

    def make(gpus: list[dict[str, Any]] | None = None, *, with_template: bool = True) -> WebEnv:
        templates = tmp_path / "templates"
        templates.mkdir(exist_ok=True)
        sup = start_supervisor(tmp_path / "state", "fake_trainer")
        ops = Operations(sup)
        app = create_app(ops, token=TOKEN, templates_dir=templates, gpus=lambda: gpus,
                         workdir=tmp_path)
        server = WebServer(app, "127.0.0.1", 0)
        server.start()
        env = WebEnv(sup=sup, ops=ops, templates=templates, server=server,
                     client=httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"},
                                         timeout=60),
                     anon=httpx.Client(base_url=server.url, timeout=60), gpus=gpus)
        if with_template:
            env.write_template("fake", fake_template())
        made.append(env)
        return env

    yield make
    for env in made:
        env.client.close()
        env.anon.close()
        env.server.stop()
        stop_supervisor(env.sup)


@pytest.fixture
def web(make_web: Callable[..., WebEnv]) -> WebEnv:
    """A ``WebEnv`` with one template (``fake``) and no NVML."""
    return make_web()
