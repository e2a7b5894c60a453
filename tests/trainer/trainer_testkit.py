"""Helpers for the trainer tests: run ``python -m trainer`` as a real process and watch its files.

(Not a conftest: tests/trainer has no ``__init__.py`` on purpose, since a test
package named ``trainer`` would shadow the real one.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.exitrecord import ExitRecord, read_exit_record
from supervisor.jobfiles.heartbeat import Heartbeat, read_heartbeat
from supervisor.jobfiles.layout import JobLayout

REPO = Path(__file__).resolve().parents[2]
DIGITS_CONFIG = REPO / "configs" / "digits.yaml"
# A loaded 2-core CI box can take 20 s just to import Lightning.
START_TIMEOUT = 120.0
RUN_TIMEOUT = 240.0


def trainer_env(**extra: str) -> dict[str, str]:
    """The environment for a trainer process: W&B offline, a fast heartbeat, no stray user config."""
    env = dict(os.environ)
    env.update({
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "ML_SUPERVISOR_HEARTBEAT_INTERVAL": "0.2",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("WANDB_API_KEY", None)
    env.update(extra)
    return env


@dataclass
class TrainerRun:
    """A ``python -m trainer`` process for one attempt of a job directory."""

    job: JobLayout
    attempt: int
    proc: subprocess.Popen[bytes]

    @property
    def attempt_dir(self) -> Path:
        return self.job.attempt(self.attempt).dir

    def heartbeat(self) -> Heartbeat | None:
        return read_heartbeat(self.job.attempt(self.attempt).heartbeat)

    def exit_record(self) -> ExitRecord | None:
        return read_exit_record(self.job.attempt(self.attempt).exit_record)

    def manifest_events(self) -> list[dict[str, Any]]:
        return read_json_lines(self.job.manifest)

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = START_TIMEOUT,
                 poll: float = 0.05) -> None:
        """Poll until ``predicate()``; fail with the process's output if it exits or time runs out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"trainer exited ({self.proc.returncode}) before {what}:\n{self.output()}")
            time.sleep(poll)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.output()}")

    def wait_for_step(self, step: int, timeout: float = START_TIMEOUT) -> Heartbeat:
        """Wait until the heartbeat reports at least global step ``step`` in phase train."""
        def reached() -> bool:
            beat = self.heartbeat()
            return beat is not None and beat.step >= step and beat.phase == "train"
        self.wait_for(reached, f"heartbeat step >= {step}", timeout)
        beat = self.heartbeat()
        assert beat is not None
        return beat

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        """Wait for the process to exit; returns its exit code (kills it and fails on timeout)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"trainer did not exit within {timeout:.0f}s:\n{self.output()}") from None

    def send(self, signum: signal.Signals) -> None:
        os.kill(self.proc.pid, signum)

    def output(self) -> str:
        """The attempt's stdout and stderr so far (for failure messages)."""
        parts = []
        for name in ("stdout.log", "stderr.log"):
            path = self.attempt_dir / name
            if path.exists():
                parts.append(f"--- {name} ---\n{path.read_text(errors='replace')[-6000:]}")
        return "\n".join(parts)


def start_trainer(
    job_root: Path,
    overrides: Sequence[str] = (),
    *,
    attempt: int = 1,
    restarts: int = 0,
    ckpt: str | Path | None = None,
    deadline: float | None = None,
    config: Path = DIGITS_CONFIG,
    env: dict[str, str] | None = None,
) -> TrainerRun:
    """Start ``python -m trainer`` on ``config`` as the daemon would, in ``job_root``'s layout.

    The trainer leads a process group of its own (as under the attempt monitor), so a test
    can signal its whole tree with ``killpg(run.proc.pid, ...)``.
    """
    job = JobLayout(job_root)
    attempt_dir = job.attempt(attempt).dir
    attempt_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "trainer", "--config", str(config), "--attempt-dir", str(attempt_dir),
           "--checkpoint-dir", str(job.checkpoints), "--attempt", str(attempt), "--restarts", str(restarts)]
    if ckpt is not None:
        cmd += ["--ckpt", str(ckpt)]
    if deadline is not None:
        cmd += ["--deadline", repr(deadline)]
    cmd += list(overrides)
    with open(attempt_dir / "stdout.log", "wb") as out, open(attempt_dir / "stderr.log", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env or trainer_env(), stdout=out, stderr=err,
                                start_new_session=True)
    return TrainerRun(job=job, attempt=attempt, proc=proc)


def run_trainer(job_root: Path, overrides: Sequence[str] = (), **kwargs: Any) -> TrainerRun:
    """``start_trainer`` and wait for it to exit."""
    run = start_trainer(job_root, overrides, **kwargs)
    run.finish()
    return run


def is_complete_zip(path: str | Path) -> bool:
    """A torch checkpoint is a zip archive: complete when its directory reads and every CRC matches."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False
