"""Daemon settings: where state lives and the knobs an operator may turn.

Read from an optional YAML file (``ml-supervisor serve --config daemon.yaml``)
plus ``key=value`` overrides, with the same one-line errors as job configs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from supervisor.access import group_id
from supervisor.config.durations import parse_duration
from supervisor.errors import ConfigError

STATE_DIR_ENV = "ML_SUPERVISOR_STATE_DIR"
TRAINER_MODULE_ENV = "ML_SUPERVISOR_TRAINER_MODULE"


@dataclass
class HangConfig:
    """Allowances for hang detection with ``hang_timeout: auto`` (seconds): the daemon config's ``hang``
    section, and the one settings type ``hang.check_hang`` takes (tests use small values)."""

    startup_allowance: float = 900.0  # before the first heartbeat/step: imports, data setup, CUDA init, compile
    phase_allowance: float = 900.0  # a validation pass, a checkpoint save, teardown
    multiple: float = 5.0  # x the slowest recent step interval
    min_timeout: float = 60.0  # never less while training (jitter, GC pauses, a slow batch)
    # the trainer writes a beat at most this often (ML_SUPERVISOR_HEARTBEAT_INTERVAL): progress is only
    # visible that late, so it is added to the step rule
    heartbeat_interval: float = 2.0


@dataclass
class GpuConfig:
    poll_interval: float = 5.0
    temperature_degraded_c: int = 85
    temperature_failed_c: float | None = None  # None: heat alone never quarantines a GPU
    # Seconds the loop waits for our orphans' GPU memory to be released; a job still
    # blocked stays queued and is retried at the next tick.
    preflight_wait: float = 2.0


@dataclass
class AlertsConfig:
    webhook_url: str | None = None
    wait_duration: float = 300.0  # W&B: the same alert title is not repeated within this window


@dataclass
class WebConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    # "auto": 8742 when free, else any free port (said in the log; `supervisorctl web-url`
    # prints the real address). A number is that port or an error; 0 is any free port.
    port: Any = "auto"
    templates_dir: str | None = None  # default: the example configs the package ships (supervisor/examples/configs)


@dataclass
class AccessConfig:
    """Shared-server mode (docs/shared-server.md): who may use the daemon's socket, and who sees every job."""

    group: str | None = None  # members may connect; None: an owner-only socket (one user's daemon)
    admin_group: str | None = None  # members see and control every job (root and the daemon's user always do)


@dataclass
class RetentionConfig:
    """How long a finished job's things are kept (``supervisorctl prune``; docs/retention.md): a duration since
    the job ended (``90d``, ``12h``), or null for ever (the default: everything is kept, and the daemon says so
    at start). When any is set the daemon prunes by itself every ``interval``."""

    jobs: Any = None  # the job: its attempts, events, logs, attempt dirs, W&B dir; its best checkpoint stays
    checkpoints: Any = None  # its checkpoints other than the best (and the abandoned ones)
    events: Any = None  # events of finished jobs and of the daemon (a live job's history is never pruned)
    alerts: Any = None  # outbox alerts already delivered
    keep_best: bool = True  # false: a pruned job's best checkpoint goes too (its row with it)
    keep_unsynced_wandb: bool = True  # false: W&B offline runs never synced (`wandb sync`) go too
    interval: Any = "1h"


@dataclass
class DaemonSettings:
    state_dir: str | None = None
    # The module run as `python -m <trainer_module>`; tests point it at a fake trainer.
    trainer_module: str = "trainer"
    # Safety-net poll of every job, and the hang clock; file events do the fast path.
    tick_interval: float = 10.0
    watch_files: bool = True  # inotify file events; off = polling every tick_interval only (benchmark baseline)
    check_timeout: float = 300.0  # submit-time import check of a config's classes
    # A read, stat or listing of a job's files (the user's directories, a Slurm cluster's shared filesystem)
    # that does not answer within this many seconds makes that job wait; every other job goes on.
    file_timeout: float = 2.0
    hang: HangConfig = field(default_factory=HangConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$ML_SUPERVISOR_STATE_DIR``, else /var/lib/ml-supervisor for root, else ~/.local/state/ml-supervisor."""
    if environ.get(STATE_DIR_ENV):
        return Path(environ[STATE_DIR_ENV]).expanduser()
    if os.geteuid() == 0:
        return Path("/var/lib/ml-supervisor")
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ml-supervisor"


def resolve_state_dir(flag: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """The state dir: ``--state-dir`` first, then the environment, then the default."""
    return Path(flag).expanduser().resolve() if flag else default_state_dir(environ).resolve()


def load_settings(path: str | None = None, overrides: Sequence[str] = (), *, state_dir: str | None = None,
                  environ: Mapping[str, str] = os.environ) -> DaemonSettings:
    """Build the settings: defaults, then the file, then overrides; the state dir resolved."""
    source = path or "daemon settings"
    base = OmegaConf.structured(DaemonSettings)
    try:
        layers: list[Any] = [base]
        if path:
            loaded = OmegaConf.load(path)
            layers.append(loaded)
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
    except FileNotFoundError:
        raise ConfigError(source, None, "cannot read the file: No such file or directory") from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(source, str(key) if key else None, str(exc).splitlines()[0]) from None
    settings: DaemonSettings = OmegaConf.to_object(merged)  # type: ignore[assignment]
    if environ.get(TRAINER_MODULE_ENV) and not any(o.startswith("trainer_module=") for o in overrides):
        settings.trainer_module = environ[TRAINER_MODULE_ENV]
    settings.state_dir = str(resolve_state_dir(state_dir or settings.state_dir, environ))
    settings.web.port = _web_port(source, settings.web.port)
    check_access(source, settings.access)
    if not settings.file_timeout > 0:
        raise ConfigError(source, "file_timeout", f"expected seconds > 0, got {settings.file_timeout!r}")
    check_retention(source, settings.retention)
    return settings


def check_access(source: str, access: AccessConfig, *, euid: int | None = None) -> None:
    """``access.*``: each group must exist; a shared socket needs a root daemon (only root runs jobs as their users)."""
    for key, name in (("access.group", access.group), ("access.admin_group", access.admin_group)):
        if name is None:
            continue
        if not name.strip():
            raise ConfigError(source, key, "expected a group name or null, got an empty name")
        if group_id(name) is None:
            raise ConfigError(source, key, f"no group named {name!r} on this machine")
    if access.admin_group is not None and access.group is None:
        raise ConfigError(source, "access.admin_group", "needs access.group (without it only the daemon's user "
                                                        "can connect)")
    if access.group is not None and (os.geteuid() if euid is None else euid) != 0:
        raise ConfigError(source, "access.group", "a shared socket needs the daemon to run as root (it runs "
                                                  "each job as its user); leave it null for a per-user daemon")


def _web_port(source: str, value: Any) -> int | str:
    """``web.port``: ``auto`` or a port number 0-65535 (0: any free port)."""
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
        return value
    raise ConfigError(source, "web.port", f"expected auto or a port number 0-65535, got {value!r}")


def check_retention(source: str, retention: RetentionConfig) -> None:
    """``retention.*``: each a duration or null (``interval`` a duration of at least a minute)."""
    for key in ("jobs", "checkpoints", "events", "alerts", "interval"):
        value = getattr(retention, key)
        if value is None and key != "interval":
            continue
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(source, f"retention.{key}", str(exc)) from None
        if key == "interval" and seconds < 60:
            raise ConfigError(source, "retention.interval", f"expected at least 1m, got {value!r}")


def retention_seconds(value: Any) -> float | None:
    """A ``retention`` duration in seconds (None: kept for ever)."""
    return None if value is None else parse_duration(value)
