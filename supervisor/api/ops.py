"""The operations ``supervisorctl`` and the web page offer, as plain JSON-able calls.

Reads go straight to the store (WAL readers run beside the loop); changes go
through the loop thread (``Supervisor.call``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from supervisor import __version__
from supervisor.api.arguments import check_arguments
from supervisor.core import Supervisor
from supervisor.errors import JobNotFound, SupervisorError
from supervisor.jobfiles.layout import JobLayout
from supervisor.store import Store
from supervisor.submit import SubmitRequest
from supervisor.sweep import ops as sweep_ops
from supervisor.sweep.manager import SweepManager
from supervisor.views import attempt_view, job_status

LOG_CHUNK = 256 * 1024


class Operations:
    """Every API operation, by name. ``dispatch(op, args)`` is what transports call."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.sweeps: SweepManager | None = None  # set by the daemon: starts workers for new sweeps

    @property
    def store(self) -> Store:
        assert self.sup.store is not None
        return self.sup.store

    def dispatch(self, op: str, args: dict[str, Any]) -> Any:
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            raise SupervisorError(f"unknown operation {op[:60]!r}")
        return handler(**check_arguments(handler, op, args))

    # -- operations ------------------------------------------------------------------------------
    def op_ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "state_dir": str(self.sup.state_dir), "version": __version__}

    def op_submit(self, config_path: str, cwd: str, config_text: str | None = None,
                  overrides: list[str] | None = None, name: str | None = None) -> dict[str, Any]:
        req = SubmitRequest(config_path=config_path, cwd=cwd, config_text=config_text,
                            overrides=list(overrides or []), name=name)
        job = self.sup.submit(req)
        return job_status(self.store, job, self.sup.clock())

    def op_status(self, job: str) -> dict[str, Any]:
        return job_status(self.store, self.store.get_job(job), self.sup.clock())

    def op_list(self, all: bool = True) -> list[dict[str, Any]]:
        now = self.sup.clock()
        return [job_status(self.store, j, now) for j in self.store.list_jobs()
                if all or not j.state.terminal]

    def op_stop(self, job: str) -> dict[str, Any]:
        row = self.sup.call(self.sup.stop_job, self.store.get_job(job).id)
        return job_status(self.store, row, self.sup.clock())

    def op_restart(self, job: str) -> dict[str, Any]:
        row = self.sup.call(self.sup.restart_job, self.store.get_job(job).id)
        return job_status(self.store, row, self.sup.clock())

    def op_gpus(self) -> list[dict[str, Any]] | None:
        """One entry per GPU (None: no NVML on this node)."""
        monitor = self.sup.gpus
        if monitor is None:
            return None
        placed: dict[int, list[str]] = {}
        for index, job_id in self.sup.gpu_jobs().items():
            placed.setdefault(index, []).append(job_id)
        return [status.as_dict(jobs=placed.get(status.index, [])) for status in monitor.snapshot()]

    def op_gpus_clear(self, index: int) -> dict[str, Any]:
        if self.sup.gpus is None:
            raise SupervisorError("no NVML on this node: there are no GPUs to clear")
        if not 0 <= int(index) < self.sup.gpus.count():
            raise SupervisorError(f"no GPU {index} on this node ({self.sup.gpus.count()} GPUs)")
        cleared = self.sup.call(self.sup.clear_gpu, int(index))
        return {"index": int(index), "cleared": cleared}

    def op_history(self, job: str) -> list[dict[str, Any]]:
        return [attempt_view(a) for a in self.store.attempts(self.store.get_job(job).id)]

    def op_events(self, after: int = 0, job: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        job_id = self.store.get_job(job).id if job else None
        return [e.__dict__ for e in self.store.events(after_id=after, job_id=job_id, limit=limit)]

    def op_logs(self, job: str, attempt: int | None = None, offsets: dict[str, int] | None = None
                ) -> dict[str, Any]:
        """A chunk of an attempt's stdout and stderr from the given offsets (``-f`` calls again)."""
        row = self.store.get_job(job)
        attempts = self.store.attempts(row.id)
        if not attempts:
            return {"attempt": None, "stdout": "", "stderr": "", "offsets": {"stdout": 0, "stderr": 0},
                    "done": row.state.terminal}
        chosen = attempts[-1] if attempt is None else next((a for a in attempts if a.n == attempt), None)
        if chosen is None:
            raise SupervisorError(f"job {row.id} has no attempt {attempt}")
        layout = JobLayout(Path(row.job_dir)).attempt(chosen.n)
        offsets = dict(offsets or {})
        out: dict[str, Any] = {"attempt": chosen.n, "offsets": {}}
        for stream, path in (("stdout", layout.stdout), ("stderr", layout.stderr)):
            start = int(offsets.get(stream, 0))
            data = b""
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read(LOG_CHUNK)
            except OSError:
                pass
            out[stream] = data.decode("utf-8", errors="replace")
            out["offsets"][stream] = start + len(data)
        latest = self.store.get_job(row.id)
        out["done"] = not chosen.live or latest.state.terminal
        out["latest_attempt"] = attempts[-1].n
        return out

    # -- sweeps (files under <state>/sweeps; a worker process per sweep runs Optuna) ---------------
    def op_sweep_create(self, sweep_path: str, cwd: str, sweep_text: str | None = None,
                        overrides: list[str] | None = None) -> dict[str, Any]:
        sweep = sweep_ops.create_sweep(self.sup.state_dir, sweep_path=sweep_path, cwd=cwd, sweep_text=sweep_text,
                                       overrides=overrides)
        if self.sweeps is not None:
            self.sweeps.check()  # its worker starts now, not at the next check
        return sweep_ops.sweep_status(sweep, self._job_state)

    def op_sweep_status(self, sweep: str) -> dict[str, Any]:
        return sweep_ops.sweep_status(sweep_ops.find_sweep(self.sup.state_dir, sweep), self._job_state)

    def op_sweep_list(self) -> list[dict[str, Any]]:
        return sweep_ops.list_status(self.sup.state_dir, self._job_state)

    def op_sweep_stop(self, sweep: str) -> dict[str, Any]:
        found = sweep_ops.find_sweep(self.sup.state_dir, sweep)
        sweep_ops.request_stop(found)
        return sweep_ops.sweep_status(found, self._job_state)

    def op_job_states(self, jobs: list[str]) -> dict[str, dict[str, Any]]:
        """State and directory of each job (a cheap poll for sweep workers; the full status costs ~8 ms)."""
        out = {}
        for job_id in jobs:
            try:
                row = self.store.get_job(job_id)
            except JobNotFound:
                continue
            out[job_id] = {"state": row.state.value, "job_dir": row.job_dir}
        return out

    def _job_state(self, job_id: str) -> str | None:
        try:
            return self.store.get_job(job_id).state.value
        except JobNotFound:
            return None
