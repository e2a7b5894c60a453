"""The launch page's "Inspect" actions: the data samples image, the model table and the learning-rate finder's
suggestions for the chosen knob values.

The web server lives in the daemon, which never imports torch, so each
inspection is a child process under the template's ``python``
(``python -m trainer inspect data|model CONFIG <knob overrides> --json --cpu``,
or ``python -m trainer tune lr ...`` for ``lr``),
in the template's workdir and environment, with a timeout (the whole process
group is killed after it) and bounded output. Results are cached per
(template file and its modification time, what, knob values): pressing Inspect
again, or inspecting after Start, costs nothing. One inspection runs at a time:
they are CPU-heavy and the node's CPUs belong to training.

``--cpu``: a look at one batch never competes with training for a GPU.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.config import parse_job_config
from supervisor.core.submit import trainer_environment
from supervisor.errors import ConfigError, SupervisorError

WHATS = ("data", "model", "lr")
IMAGES = {"data": "samples.png", "lr": "lr_find.png"}  # what each writes to its --out folder, shown on the page
DEFAULT_TIMEOUT = 180.0
MAX_OUTPUT = 1024 * 1024  # bytes of the child's stdout read (its JSON); stderr: the tail only
MAX_STDERR_TAIL = 4096
MAX_IMAGE = 4 * 1024 * 1024
SAMPLES = 16
CACHE_SIZE = 32


class InspectFailed(SupervisorError):
    """The inspection ran but did not produce a result (timeout, crash, oversized output)."""

    code = "inspect_failed"
    exit_status = 1


@dataclass(frozen=True)
class InspectKey:
    """What a cached result is for."""

    template_path: str
    mtime_ns: int
    what: str
    overrides: tuple[str, ...]


class Inspector:
    """Runs and caches inspections for the web page."""

    def __init__(self, *, trainer_module: str = "trainer", timeout: float = DEFAULT_TIMEOUT,
                 cache_size: int = CACHE_SIZE) -> None:
        self.trainer_module = trainer_module
        self.timeout = timeout
        self.cache_size = cache_size
        self._cache: OrderedDict[InspectKey, dict[str, Any]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one inspection at a time

    def inspect(self, template_path: Path, overrides: list[str], what: str, cwd: Path) -> dict[str, Any]:
        """The result for ``what`` (``data``, ``model`` or ``lr``) of the template with ``overrides``; cached."""
        if what not in WHATS:
            raise ValueError(f"what must be one of {', '.join(WHATS)}")
        key = InspectKey(str(template_path), template_path.stat().st_mtime_ns, what, tuple(overrides))
        cached = self._cached(key)
        if cached is not None:
            return {**cached, "cached": True}
        with self._run_lock:
            cached = self._cached(key)  # a twin request may have filled it while this one waited
            if cached is not None:
                return {**cached, "cached": True}
            started = time.monotonic()
            result = self._run(template_path, overrides, what, cwd)
            result["seconds"] = round(time.monotonic() - started, 2)
        with self._cache_lock:
            self._cache[key] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return {**result, "cached": False}

    def _cached(self, key: InspectKey) -> dict[str, Any] | None:
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        return None

    def _run(self, template_path: Path, overrides: list[str], what: str, cwd: Path) -> dict[str, Any]:
        source = str(template_path)
        cfg = parse_job_config(template_path.read_text(encoding="utf-8"), source=source, overrides=overrides)
        workdir = Path(cfg.workdir).expanduser() if cfg.workdir else cwd
        workdir = (cwd / workdir if not workdir.is_absolute() else workdir).resolve()
        python = cfg.python or sys.executable
        with tempfile.TemporaryDirectory(prefix="ml-supervisor-inspect-") as tmp:
            out_dir = Path(tmp) / "out"
            verb = ["tune", "lr"] if what == "lr" else ["inspect", what]
            command = [python, "-m", self.trainer_module, *verb, source, *overrides, "--json", "--cpu"]
            if what == "data":
                command += ["--out", str(out_dir), "-n", str(SAMPLES), "--no-wandb"]
            elif what == "lr":
                command += ["--out", str(out_dir)]
            code, stdout, stderr = self._child(command, workdir, trainer_environment(cfg, workdir), Path(tmp))
            if code != 0:
                lines = [ln for ln in stderr.splitlines() if ln.strip()]
                last = lines[-1] if lines else f"exit code {code}"
                if code == 2:
                    raise ConfigError(source, None, last.removeprefix(source + ": "))
                raise InspectFailed(f"{source}: inspect {what} failed: {last}")
            try:
                report = json.loads(stdout)
            except ValueError:
                raise InspectFailed(f"{source}: inspect {what} printed no JSON result") from None
            result: dict[str, Any] = {"what": what, "report": report}
            if what in IMAGES:
                result["image"] = _data_uri(out_dir / IMAGES[what])
            # the temp dir is gone after: file names only
            if what == "data":
                report["files"] = [Path(p).name for p in report.get("files", [])]
            elif what == "lr" and isinstance(report.get("plot"), str):
                report["plot"] = Path(report["plot"]).name
            return result

    def _child(self, command: list[str], cwd: Path, env: dict[str, str], tmp: Path) -> tuple[int, str, str]:
        """Run ``command`` in its own process group; kill the group at the timeout. Output read bounded."""
        with open(tmp / "stdout", "w+b") as out, open(tmp / "stderr", "w+b") as err:
            proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise InspectFailed(f"the inspection did not finish within {self.timeout:.0f}s") from None
            finally:
                _kill_group(proc)  # DataLoader workers or anything else the child left behind
            size = out.seek(0, os.SEEK_END)
            if size > MAX_OUTPUT:
                raise InspectFailed(f"the inspection printed {size} bytes, more than {MAX_OUTPUT}")
            out.seek(0)
            stdout = out.read(MAX_OUTPUT).decode("utf-8", "replace")
            err_size = err.seek(0, os.SEEK_END)
            err.seek(max(0, err_size - MAX_STDERR_TAIL))
            stderr = err.read().decode("utf-8", "replace")
        return code, stdout, stderr


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _data_uri(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) > MAX_IMAGE:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
