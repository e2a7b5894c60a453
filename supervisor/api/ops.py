"""The operations ``supervisorctl`` and the web page offer, as plain JSON-able calls.

Reads go straight to the store (WAL readers run beside the loop); changes go
through the loop thread (``Supervisor.call``). Every operation runs for a
``Caller`` (``for_caller``): a non-admin sees and controls only the jobs they
submitted; anyone else's is "not found". The default caller is the daemon's own
user (the web page, sweep workers, tests): an admin.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from supervisor import __version__
from supervisor.access import Caller, daemon_caller
from supervisor.api.arguments import BadRequest, check_arguments
from supervisor.api.schedule_ops import ScheduleOperations
from supervisor.api.summary_view import job_summary
from supervisor.api.views import attempt_view, job_status
from supervisor.core import Supervisor
from supervisor.core.retention import apply_prune, plan_prune, rules_from
from supervisor.core.submit import SubmitRequest
from supervisor.errors import JobNotFound, SupervisorError
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.safe_read import read_range
from supervisor.rules.states import JobState
from supervisor.store import JobRow, Store
from supervisor.sweep import ops as sweep_ops
from supervisor.sweep.files import SweepDir
from supervisor.sweep.manager import SweepManager
from supervisor.sweep.ops import SweepNotFound

LOG_CHUNK = 256 * 1024
DEFAULT_FINISHED = 50  # finished jobs `supervisorctl list` shows by default (the latest to end)


class Operations(ScheduleOperations):
    """Every API operation, by name. ``dispatch(op, args)`` is what transports call.

    Scheduled runs' operations come from ``ScheduleOperations`` (``api/schedule_ops.py``).
    """

    def __init__(self, supervisor: Supervisor, caller: Caller | None = None) -> None:
        self.sup = supervisor
        self.sweeps: SweepManager | None = None  # set by the daemon: starts workers for new sweeps
        self.caller = caller or daemon_caller()

    def for_caller(self, caller: Caller) -> Operations:
        """These operations as ``caller`` runs them (the transport makes one per connection)."""
        bound = copy.copy(self)
        bound.caller = caller
        return bound

    @property
    def _owner_filter(self) -> int | None:
        """The uid whose jobs alone exist for this caller (``None``: an admin, every job)."""
        return None if self.caller.admin else self.caller.uid

    def _job(self, job: str) -> JobRow:
        """The job named ``job`` (an id or a unique prefix) as this caller may see it, else ``JobNotFound``."""
        return self.store.get_job(job, owner_uid=self._owner_filter)

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
        if config_text is None and self.caller.uid != os.getuid():
            # The daemon would read the path with its own rights (root's): a user sends the text they read.
            raise BadRequest("submit: config_text: required (the daemon reads no file on another user's behalf)")
        req = SubmitRequest(config_path=config_path, cwd=cwd, config_text=config_text,
                            overrides=list(overrides or []), name=name)
        job = self.sup.submit(req, owner_uid=self.caller.uid)
        return job_status(self.store, job, self.sup.clock())

    def op_status(self, job: str) -> dict[str, Any]:
        return job_status(self.store, self._job(job), self.sup.clock())

    def op_list(self, all: bool = True, limit: int | None = None, offset: int = 0, since: int | None = None,
                states: list[str] | None = None) -> list[dict[str, Any]]:
        """The active jobs (their full status) then the finished ones, the latest to end first, as summaries
        from the store (no file of theirs is read; ``summary_view``). ``all`` false: the active ones alone;
        ``limit``: at most this many finished ones (None: every one), from ``offset``; ``since``: those that
        ended since this Unix time; ``states``: only jobs in these states."""
        return self.op_list_page(limit=limit, offset=offset, since=since, states=states, finished=all)["jobs"]

    def op_list_page(self, limit: int | None = DEFAULT_FINISHED, offset: int = 0, since: int | None = None,
                     states: list[str] | None = None, finished: bool = True) -> dict[str, Any]:
        """``list`` with its counts: ``{jobs, active, finished: {total, offset, limit, shown}, counts}``;
        ``total`` counts the finished jobs that match (the page is ``[offset, offset + limit)`` of them), ``counts``
        every job of this caller by state. A bounded number of indexed queries, whatever the store holds."""
        wanted = _job_states(states)
        owner = self._owner_filter
        now = self.sup.clock()
        active = self.store.active_jobs(owner_uid=owner, states=wanted)
        page = self.store.finished_jobs(limit=limit, offset=offset, since=since, states=wanted, owner_uid=owner,
                                        ) if finished else None
        jobs = [job_status(self.store, j, now) for j in active]
        if page is not None:
            attempts = self.store.attempts_of([j.id for j in page.jobs])
            jobs += [job_summary(j, attempts[j.id]) for j in page.jobs]
        return {"jobs": jobs, "active": len(active),
                "finished": {"total": page.total if page else 0, "offset": offset, "limit": limit,
                             "shown": len(page.jobs) if page else 0},
                "counts": self.store.job_counts(owner_uid=owner)}

    def op_stop(self, job: str) -> dict[str, Any]:
        row = self.sup.call(self.sup.stop_job, self._job(job).id)
        return job_status(self.store, row, self.sup.clock())

    def op_restart(self, job: str) -> dict[str, Any]:
        row = self.sup.call(self._restart_unless_pruned, self._job(job).id)
        return job_status(self.store, row, self.sup.clock())

    def _restart_unless_pruned(self, job_id: str) -> JobRow:
        """(loop thread, where a prune marks the job) A pruned job's files are gone: it is not restarted."""
        row = self.store.get_job(job_id)
        if row.pruned_at is not None:
            kept = f"; its best checkpoint is kept: {row.best_checkpoint}" if row.best_checkpoint else ""
            raise SupervisorError(f"job {job_id} was pruned (its attempts, logs and checkpoints are gone{kept}); "
                                  "submit its config again")
        return self.sup.restart_job(job_id)

    def op_prune(self, older_than: int | None = None, checkpoints_older_than: int | None = None,
                 events_older_than: int | None = None, alerts_older_than: int | None = None,
                 include_best: bool = False, include_wandb: bool = False, dry_run: bool = False
                 ) -> dict[str, Any]:
        """Remove finished jobs older than ``older_than`` seconds (and the rest, by age in seconds; each unset
        one from the daemon's ``retention`` settings): see ``core.retention``. ``dry_run``: only say what."""
        if not self.caller.admin:
            raise SupervisorError("prune: for admins (root or access.admin_group)")
        now = self.sup.clock()
        rules = rules_from(self.sup.settings.retention, now, jobs=older_than, checkpoints=checkpoints_older_than,
                           events=events_older_than, alerts=alerts_older_than, include_best=include_best,
                           include_wandb=include_wandb)
        if not rules.any:
            raise BadRequest("prune: nothing to prune: give --older-than (or set retention.jobs in the daemon's "
                             "settings)")
        plan = plan_prune(self.store, rules, now)
        if not dry_run:
            plan = apply_prune(plan, self.store, self.sup.call)
        return plan.as_dict()

    def op_gpus(self) -> list[dict[str, Any]] | None:
        """One entry per GPU (None: no NVML on this node)."""
        monitor = self.sup.gpus
        if monitor is None:
            return None
        placed: dict[int, list[str]] = {}
        for index, job_id in self.sup.gpu_jobs().items():
            # another user's job on a GPU: the GPU is busy, but its id is not theirs to know
            placed.setdefault(index, []).append(job_id if self._visible(job_id) else "(another user's job)")
        return [status.as_dict(jobs=placed.get(status.index, [])) for status in monitor.snapshot()]

    def op_gpus_clear(self, index: int) -> dict[str, Any]:
        if not self.caller.admin:  # the node's GPUs are everyone's: putting one back in service is an admin's call
            raise SupervisorError("gpus clear: for admins (root or access.admin_group)")
        if self.sup.gpus is None:
            raise SupervisorError("no NVML on this node: there are no GPUs to clear")
        if not 0 <= int(index) < self.sup.gpus.count():
            raise SupervisorError(f"no GPU {index} on this node ({self.sup.gpus.count()} GPUs)")
        cleared = self.sup.call(self.sup.clear_gpu, int(index))
        return {"index": int(index), "cleared": cleared}

    def op_history(self, job: str) -> list[dict[str, Any]]:
        return [attempt_view(a) for a in self.store.attempts(self._job(job).id)]

    def op_events(self, after: int = 0, job: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        job_id = self._job(job).id if job else None
        return [e.__dict__ for e in self.store.events(after_id=after, job_id=job_id, limit=limit,
                                                      owner_uid=self._owner_filter)]

    def op_logs(self, job: str, attempt: int | None = None, offsets: dict[str, int] | None = None
                ) -> dict[str, Any]:
        """A chunk of an attempt's stdout and stderr from the given offsets (``-f`` calls again)."""
        row = self._job(job)
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
                data = _read_log(path, start, row.owner_uid)
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
        self._sweeps_allowed()
        sweep = sweep_ops.create_sweep(self.sup.state_dir, sweep_path=sweep_path, cwd=cwd, sweep_text=sweep_text,
                                       overrides=overrides)
        if self.sweeps is not None:
            self.sweeps.check()  # its worker starts now, not at the next check
            self.sweeps.wake()  # and the manager watches it from now on
        return sweep_ops.sweep_status(sweep, self._job_state)

    def op_sweep_status(self, sweep: str) -> dict[str, Any]:
        return sweep_ops.sweep_status(self._sweep(sweep), self._job_state)

    def op_sweep_list(self) -> list[dict[str, Any]]:
        return sweep_ops.list_status(self.sup.state_dir, self._job_state) if self.caller.admin else []

    def op_sweep_stop(self, sweep: str) -> dict[str, Any]:
        found = self._sweep(sweep)
        sweep_ops.request_stop(found)
        return sweep_ops.sweep_status(found, self._job_state)

    def op_job_states(self, jobs: list[str]) -> dict[str, dict[str, Any]]:
        """State and directory of each job (a cheap poll for sweep workers; the full status costs ~8 ms)."""
        out = {}
        for job_id in jobs:
            try:
                row = self._job(job_id)
            except JobNotFound:
                continue
            out[job_id] = {"state": row.state.value, "job_dir": row.job_dir}
        return out

    def _sweeps_allowed(self) -> None:
        # A sweep's worker runs as the daemon and submits its trials as the daemon: a user's sweep would run
        # the user's code as root. Until workers run as their owner, sweeps on a shared daemon are admins'.
        if not self.caller.admin:
            raise SupervisorError("sweeps on a shared daemon are for admins (access.admin_group); "
                                  "run your own daemon (ml-supervisor serve as you) for a sweep")

    def _sweep(self, sweep: str) -> SweepDir:
        """The sweep named ``sweep``; non-admins have none (``sweep_create`` is refused them)."""
        if not self.caller.admin:
            raise SweepNotFound(f"no sweep {sweep[:60]!r} (see `supervisorctl sweep list`)")
        return sweep_ops.find_sweep(self.sup.state_dir, sweep)

    def _visible(self, job_id: str) -> bool:
        try:
            self._job(job_id)
        except JobNotFound:
            return False
        return True

    def _job_state(self, job_id: str) -> str | None:
        try:
            return self.store.get_job(job_id).state.value
        except JobNotFound:
            return None


def _job_states(names: list[str] | None) -> list[JobState] | None:
    """``states`` as ``JobState`` values; ``BadRequest`` naming one that is none."""
    if names is None:
        return None
    known = {s.value: s for s in JobState}
    for name in names:
        if name not in known:
            raise BadRequest(f"list: states: no state {name[:30]!r} (states: {', '.join(known)})")
    return [known[n] for n in names]


def _read_log(path: Path, start: int, owner_uid: int) -> bytes:
    """Up to ``LOG_CHUNK`` bytes of a log from ``start`` (empty when there is none to read). The attempt dir
    of a job run as its owner is the owner's: a link planted there, or a file that is not theirs, must not let
    them read as the daemon; a FIFO or a file that does not answer must not hold the request (``safe_read``)."""
    return read_range(path, start, LOG_CHUNK, total_cap=0, owners=(owner_uid, os.getuid())) or b""
