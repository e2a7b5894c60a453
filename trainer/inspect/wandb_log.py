"""The W&B run an inspection logs to: in the job's project and group, one per inspection, W&B mode as configured."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.job import LoadedJob
from trainer.wandb_run import resolve_mode


def log_to_wandb(loaded: LoadedJob, out_dir: Path, job_type: str, write: Callable[[Any], None]) -> str | None:
    """Open a run (job type ``job_type``), call ``write(run)``, finish it; returns the run's directory.

    None when the config has W&B disabled (``logger.wandb.mode``, or ``WANDB_MODE``). The
    run goes to ``logger.wandb.dir`` when set, else ``out_dir/wandb``.
    """
    wcfg = loaded.cfg.logger.wandb
    mode, _ = resolve_mode(str(wcfg.mode))
    if mode == "disabled":
        return None
    import wandb  # only when W&B is on

    save_dir = Path(wcfg.dir).expanduser() if wcfg.dir else out_dir / "wandb"
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=wcfg.project, entity=wcfg.entity, group=wcfg.group or loaded.cfg.name,
                     job_type=job_type, name=f"{loaded.cfg.name}-{job_type}", dir=str(save_dir),
                     mode=mode,  # type: ignore[arg-type]  # "online" or "offline" here (resolve_mode)
                     tags=list(wcfg.tags), reinit="create_new")
    try:
        write(run)
        return str(Path(run.dir).parent)
    finally:
        run.finish()
