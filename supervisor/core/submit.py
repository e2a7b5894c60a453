"""Submit: validate a job config completely, then freeze it into a new job directory.

The schema, the workdir and interpreter and the GPU count are checked before
anything is created; then the job's directory is made and the import check of
the config's classes runs in the job's own interpreter (``python -m trainer
--check``), so a bad ``class_path`` is refused at submit with one line, never at
3 a.m. The directory exists during that check so that attempt 1's standby can
import beside it (``while_checking``: the check and the first attempt's imports,
~10 s each on a loaded CPU box, overlap instead of adding up); a failed check
removes the directory, and the store never hears of the job.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from supervisor.access import RunAs, run_as_for
from supervisor.config import name_override, parse_duration, parse_job_config, to_yaml
from supervisor.config.safe_yaml import read_config_text
from supervisor.core.elastic_shape import check_elastic_job
from supervisor.errors import ConfigError, ResourceUnavailable, SupervisorError
from supervisor.jobfiles.atomic import write_json_atomic
from supervisor.jobfiles.layout import JobLayout
from supervisor.rules.states import JobState
from supervisor.runners.registry import BACKENDS, backend_of
from supervisor.store import JobRow


@dataclass
class SubmitRequest:
    """What a client sends: the config (text and where it came from), overrides, and the caller's cwd."""

    config_path: str
    cwd: str
    config_text: str | None = None  # None: read config_path
    overrides: list[str] = field(default_factory=list)
    name: str | None = None
    origin: dict[str, Any] = field(default_factory=dict)  # recorded in the submitted event (a schedule's fire)


def load_request_config(req: SubmitRequest) -> DictConfig:
    """Parse and validate the config of ``req`` (schema only; no imports)."""
    text = req.config_text
    if text is None:
        text = read_config_text(req.config_path)  # bounded: see safe_yaml.MAX_BYTES
    overrides = list(req.overrides)
    if req.name:
        overrides.append(name_override(req.name, req.config_path))
    return parse_job_config(text, source=req.config_path, overrides=overrides)


def trainer_environment(cfg: DictConfig, workdir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a trainer of this job runs with: the daemon's, the config's ``env``, the workdir importable."""
    env = dict(os.environ if base is None else base)
    env.update({str(k): str(v) for k, v in cfg.env.items()})
    paths = [str(workdir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    return env


# Called with the new job while its import check runs; returns what undoes it should the check fail.
WhileChecking = Callable[[JobRow], Callable[[], None] | None]


def prepare_job(req: SubmitRequest, *, jobs_dir: Path, trainer_module: str, gpu_count: int | None,
                check_timeout: float, now: float | None = None, owner_uid: int | None = None,
                while_checking: WhileChecking | None = None) -> tuple[JobRow, DictConfig]:
    """Validate ``req`` completely and freeze it into ``jobs_dir/<id>``; on a refusal nothing is left behind.

    ``owner_uid``: who submits (default: the daemon's user). When that is someone else
    (shared-server mode), the import check runs as them and the job's writable
    directories become theirs. ``while_checking`` runs once the job's directory
    exists, before the import check (module docstring).
    """
    owner_uid = os.getuid() if owner_uid is None else owner_uid
    try:
        run_as = run_as_for(owner_uid)
    except LookupError as exc:
        raise SupervisorError(f"cannot run jobs for the caller: {exc}") from None
    cfg = load_request_config(req)
    source = req.config_path
    workdir = Path(cfg.workdir).expanduser() if cfg.workdir else Path(req.cwd)
    if not workdir.is_absolute():
        workdir = Path(req.cwd) / workdir
    workdir = workdir.resolve()
    if not workdir.is_dir():
        raise ConfigError(source, "workdir", f"{workdir} is not a directory")
    python = cfg.python or sys.executable
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ConfigError(source, "python", f"{python} is not an executable file")
    requested = int(cfg.supervision.gpus)
    if requested > 0 and (gpu_count or 0) < requested:
        have = "no GPUs (or no NVML)" if not gpu_count else f"{gpu_count} GPU{'s' if gpu_count != 1 else ''}"
        raise ResourceUnavailable(
            f"{source}: supervision.gpus: the job asks for {requested} GPUs; this node has {have}")
    check_elastic_job(cfg, source)
    if run_as is not None and not backend_of(cfg).supports_run_as:
        # e.g. sbatch from the daemon submits as the daemon (root): another user's code never runs that way
        runs_as = ", ".join(name for name, backend in BACKENDS.items() if backend.supports_run_as)
        raise ConfigError(source, "supervision.backend", f"{cfg.supervision.backend} runs jobs as the daemon's "
                                                         f"user only; on a shared daemon use {runs_as} "
                                                         "(or your own daemon)")
    cfg.workdir = str(workdir)
    cfg.python = python

    job_id = _new_job_id(cfg.name, jobs_dir)
    layout = JobLayout(jobs_dir / job_id)
    wandb = cfg.logger.wandb
    wandb.run_id = wandb.run_id or re.sub(r"[^A-Za-z0-9_-]", "-", job_id)
    wandb.dir = wandb.dir or str(layout.wandb_dir)
    wandb.group = wandb.group or cfg.name
    now = time.time() if now is None else now

    jobs_dir.mkdir(parents=True, exist_ok=True)
    layout.root.mkdir()  # ours from here on (it did not exist): removed whole if anything below fails
    undo = None
    try:
        layout.checkpoints.mkdir()
        layout.attempts.mkdir()
        layout.wandb_dir.mkdir(exist_ok=True)
        tmp = layout.config.with_suffix(".tmp")
        tmp.write_text(to_yaml(cfg), encoding="utf-8")
        os.replace(tmp, layout.config)
        write_json_atomic(layout.root / "submitted.json", {
            "config_source": source, "overrides": list(req.overrides), "cwd": req.cwd, "time": now,
        })
        if run_as is not None:
            hand_over(layout, run_as)
        budget = cfg.supervision.budget
        job = JobRow(
            id=job_id, name=cfg.name, state=JobState.QUEUED, created_at=now, updated_at=now,
            job_dir=str(layout.root), workdir=str(workdir), config_source=source,
            budget_s=None if budget is None else parse_duration(budget), gpus_requested=requested,
            wandb_run_id=wandb.run_id, owner_uid=owner_uid,
        )
        if while_checking is not None:
            undo = while_checking(job)
        _check_imports(cfg, source=source, python=python, workdir=workdir, trainer_module=trainer_module,
                       timeout=check_timeout, run_as=run_as)
    except BaseException:
        if undo is not None:
            undo()
        shutil.rmtree(layout.root, ignore_errors=True)
        raise
    return job, cfg


def hand_over(layout: JobLayout, run_as: RunAs) -> None:
    """Give a job's writable directories to its owner; keep the rest the daemon's.

    The job dir itself stays the daemon's (``root:<owner's group>`` 0750): the owner
    reads it but cannot replace the lock (whose flock keeps two trainers of one job
    apart), the frozen config, or the attempt dirs (the daemon makes each one and
    then hands it over, so none can be planted). Other users cannot enter it.
    """
    os.chown(layout.root, os.getuid(), run_as.gid)
    os.chmod(layout.root, 0o750)
    for path in (layout.checkpoints, layout.wandb_dir):
        os.chown(path, run_as.uid, run_as.gid)
    os.chmod(layout.attempts, 0o755)


def _new_job_id(name: str, jobs_dir: Path) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]", "-", name)[:40]
    while True:
        job_id = f"{slug}-{secrets.token_hex(3)}"
        if not (jobs_dir / job_id).exists():
            return job_id


def _check_imports(cfg: DictConfig, *, source: str, python: str, workdir: Path, trainer_module: str,
                   timeout: float, run_as: RunAs | None = None) -> None:
    """Run ``python -m <trainer> --config <resolved> --check`` in the job's environment (as ``run_as``)."""
    with tempfile.TemporaryDirectory(prefix="ml-supervisor-check-") as tmp:
        resolved = Path(tmp) / "config.yaml"
        resolved.write_text(to_yaml(cfg), encoding="utf-8")
        env = trainer_environment(cfg, workdir, run_as.environment(os.environ) if run_as else None)
        identity: dict[str, Any] = {}
        if run_as is not None:
            os.chown(tmp, run_as.uid, run_as.gid)  # the config may hold secrets (env): the owner's alone
            os.chown(resolved, run_as.uid, run_as.gid)
            identity = {"user": run_as.uid, "group": run_as.gid, "extra_groups": list(run_as.groups),
                        "umask": 0o022}
        try:
            proc = subprocess.run([python, "-m", trainer_module, "--config", str(resolved), "--check"],
                                  cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, **identity)
        except subprocess.TimeoutExpired:
            raise ConfigError(source, None, f"the import check did not finish within {timeout:.0f}s") from None
        except OSError as exc:  # as the owner: a workdir or interpreter they cannot use
            who = f" as {run_as.name}" if run_as else ""
            raise ConfigError(source, None, f"cannot run the import check{who}: {exc.strerror or exc}"
                              f"{f' ({exc.filename})' if exc.filename else ''}") from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            message = lines[-1] if lines else f"the import check failed with exit code {proc.returncode}"
            message = message.replace(str(resolved), source)
            if message.startswith(source + ": "):
                message = message[len(source) + 2:]
            raise ConfigError(source, None, message)
