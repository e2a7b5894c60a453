"""The W&B side of a job: one run per job, continued by every attempt.

The run id is fixed by the supervisor (``logger.wandb.run_id``) and the run is
opened with ``resume="allow"``, so attempt 3 appends to the run attempts 1 and
2 wrote. ``online`` without an API key falls back to ``offline`` (the files can
be synced later with ``wandb sync``) instead of failing or prompting.
"""

from __future__ import annotations

import netrc
import os
import secrets
import string
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig

from supervisor.config.public import public_config

DEFAULT_HOST = "api.wandb.ai"
# Values of WANDB_MODE that mean "do not talk to the server" and win over a configured "online".
_LOCAL_ENV_MODES = {"offline": "offline", "dryrun": "offline", "disabled": "disabled"}


def has_api_key(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether W&B credentials are configured: ``WANDB_API_KEY`` or a netrc entry for the W&B host.

    Cheap (no network, no wandb import): it only reads the environment and the netrc file.
    """
    if environ.get("WANDB_API_KEY", "").strip():
        return True
    host = urlparse(environ.get("WANDB_BASE_URL", "")).hostname or DEFAULT_HOST
    path = environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(configured: str, environ: Mapping[str, str] = os.environ) -> tuple[str, str | None]:
    """The mode to run W&B in, and a note for the log when it differs from ``configured``.

    ``disabled`` stays disabled. ``online`` yields to a local ``WANDB_MODE``
    (offline/dryrun/disabled) and becomes ``offline`` without credentials.
    """
    if configured != "online":
        return configured, None
    env_mode = _LOCAL_ENV_MODES.get(environ.get("WANDB_MODE", "").strip().lower())
    if env_mode is not None:
        return env_mode, f"W&B mode {env_mode} (from WANDB_MODE)"
    if not has_api_key(environ):
        return "offline", "W&B: no API key configured (WANDB_API_KEY or ~/.netrc); logging offline"
    return "online", None


def generate_run_id(length: int = 8) -> str:
    """A new W&B run id in W&B's own style (lowercase letters and digits)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def wandb_dir(configured: str | None, attempt_dir: Path) -> Path:
    """Where W&B writes: the configured dir, else the job's ``wandb/`` beside ``attempts/``.

    Standalone runs (an attempt dir not inside ``<job>/attempts/``) use ``<attempt-dir>/wandb``.
    """
    if configured:
        return Path(configured).expanduser().absolute()
    attempt_dir = attempt_dir.absolute()
    if attempt_dir.parent.name == "attempts":
        return attempt_dir.parent.parent / "wandb"
    return attempt_dir / "wandb"


def build_wandb_logger(cfg: DictConfig, attempt_dir: Path) -> Any | None:
    """A ``WandbLogger`` for the job, or ``None`` when W&B is disabled.

    Prints (stderr) a generated run id when the config has none, so a
    standalone user can continue the run by setting ``logger.wandb.run_id``.
    """
    wcfg = cfg.logger.wandb
    mode, note = resolve_mode(str(wcfg.mode))
    if note:
        _log(note)
    if mode == "disabled":
        return None
    from pytorch_lightning.loggers import WandbLogger  # here: the attempt imports this module before torch

    run_id = wcfg.run_id
    if not run_id:
        run_id = generate_run_id()
        _log(f"W&B run id {run_id} (set logger.wandb.run_id={run_id} to continue this run)")
    save_dir = wandb_dir(wcfg.dir, attempt_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        id=str(run_id),
        resume="allow",
        project=wcfg.project,
        entity=wcfg.entity,
        name=wcfg.name or cfg.name,
        group=wcfg.group or cfg.name,
        tags=list(wcfg.tags),
        save_dir=str(save_dir),
        mode=mode,
    )


def record_attempt(logger: Any, cfg: DictConfig, *, attempt: int, restarts: int, step: int) -> None:
    """Put the attempt number, restart count and the job config in the run (rank 0 only).

    With an ``OpeningWandbLogger`` this happens once its run is open (never waiting for it).
    """
    values = {
        "supervisor/attempt": attempt,
        "supervisor/restarts": restarts,
        "job": public_config(cfg),  # env values as <set>: a W&B run is often shared
    }

    def record(wandb_logger: Any) -> None:
        wandb_logger.experiment.config.update(values, allow_val_change=True)
        wandb_logger.log_metrics({"supervisor/attempt": attempt, "supervisor/restarts": restarts}, step=step)

    when_open = getattr(logger, "when_open", None)
    if when_open is not None:
        when_open(record)
    else:
        record(logger)


def finish_wandb(exit_code: int) -> None:
    """Close the W&B run now (if one is open), so nothing is left for interpreter exit."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    try:
        wandb.finish(exit_code=exit_code)
    except Exception as exc:  # never let W&B stop the exit record from being written
        _log(f"W&B finish failed: {type(exc).__name__}: {exc}")


def _log(message: str) -> None:
    print(f"[trainer] {message}", file=sys.stderr, flush=True)
