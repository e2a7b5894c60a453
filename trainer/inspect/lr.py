"""``tune lr``: Lightning's learning-rate finder (``Tuner.lr_find``) on the job config.

The finder trains for ``steps`` steps while raising the learning rate
exponentially, records the loss, and suggests the rate where the loss falls
fastest. It needs the module to expose ``lr`` or ``learning_rate`` (as an
attribute or a saved hyperparameter) and to read it in ``configure_optimizers``.
The module's weights are restored afterwards; nothing is checkpointed.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from supervisor.errors import ConfigError
from trainer.inspect.common import cpu_trainer_args
from trainer.job import guarded, load_job

LR_NAMES = ("lr", "learning_rate")
# Lightning's suggestion skips this many points at each end of the curve (LRFinder.suggestion defaults).
SKIP_BEGIN, SKIP_END = 10, 1


@dataclass
class LrReport:
    """What ``tune lr`` found (its ``--json`` is ``as_dict()``)."""

    suggested_lr: float | None
    override: str | None  # model.init_args.<name>=<value>, to paste on the command line
    attr_name: str
    plot: str
    points: int  # finite (lr, loss) points recorded
    reason: str | None = None  # why there is no suggestion

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values (``--json``)."""
        return asdict(self)


def lr_attribute(model: Any) -> str | None:
    """The name under which ``model`` exposes its learning rate (as Lightning's finder looks it up), or None."""
    from pytorch_lightning.utilities.parsing import lightning_hasattr  # Lightning: after the job's env is applied

    return next((name for name in LR_NAMES if lightning_hasattr(model, name)), None)


def find_lr(config: str, overrides: Sequence[str] = (), *, cpu: bool = False, out: str | Path = "inspect",
            steps: int = 100, min_lr: float = 1e-8, max_lr: float = 1.0) -> LrReport:
    """Run ``Tuner.lr_find`` on the config's module and data; write ``out/lr_find.png``."""
    import pytorch_lightning as pl  # after load_job applied the job's env (as every Lightning import here)
    from pytorch_lightning.tuner import Tuner

    loaded = load_job(config, overrides)
    if loaded.cfg.seed is not None:
        pl.seed_everything(int(loaded.cfg.seed), workers=True, verbose=False)
    model = loaded.build_model()
    datamodule = loaded.build_data()
    attr = lr_attribute(model)
    if attr is None:
        raise ConfigError(config, "model", f"{type(model).__name__} exposes no `lr` or `learning_rate` (an "
                          "attribute, or a hyperparameter saved with save_hyperparameters()): the finder sets "
                          "one of them, and configure_optimizers must read it")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    args = cpu_trainer_args(loaded.job.trainer_args, cpu)
    args.pop("default_root_dir", None)
    args.update(enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with tempfile.TemporaryDirectory(prefix="lr-find-") as scratch, _LightningErrors() as messages:
        trainer = pl.Trainer(**args, logger=False, callbacks=[], default_root_dir=scratch)
        finder = guarded(config, "model", "Tuner.lr_find", lambda: Tuner(trainer).lr_find(
            model, datamodule=datamodule, num_training=steps, min_lr=min_lr, max_lr=max_lr,
            attr_name=attr, update_attr=False))
        if finder is None:
            raise ConfigError(config, "trainer", "Tuner.lr_find ran no steps (trainer.fast_dev_run is set?)")
        suggestion = finder.suggestion(skip_begin=SKIP_BEGIN, skip_end=SKIP_END)
    losses = finder.results.get("loss", [])
    points = sum(1 for v in losses if isinstance(v, float) and math.isfinite(v))
    reason = None
    if suggestion is None or not math.isfinite(suggestion):
        suggestion = None
        reason = (f"Lightning found no suggestion: the finder recorded {len(losses)} points ({points} finite) and "
                  f"needs more than {SKIP_BEGIN + SKIP_END + 1} after skipping the first {SKIP_BEGIN} and last "
                  f"{SKIP_END}; raise --steps, or check that the loss is finite")
        if messages:
            reason += f" ({messages[-1]})"
    plot = out_dir / "lr_find.png"
    write_plot(finder, plot, suggest=suggestion is not None)
    return LrReport(
        suggested_lr=suggestion, attr_name=attr, plot=str(plot), points=points, reason=reason,
        override=f"model.init_args.{attr}={suggestion:.3g}" if suggestion is not None else None,
    )


def write_plot(finder: Any, path: Path, *, suggest: bool) -> None:
    """The loss-vs-learning-rate curve (log x axis), with the suggestion marked when there is one."""
    import matplotlib  # slow to import: only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = finder.plot(suggest=suggest, show=False)
    fig.axes[0].set_title("learning-rate finder")
    fig.savefig(path, dpi=100)
    plt.close(fig)


class _LightningErrors(logging.Handler):
    """Collects what Lightning's tuner logs at ERROR (the reason it gives for no suggestion)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []
        self._logger = logging.getLogger("pytorch_lightning.tuner.lr_finder")

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> list[str]:
        self._logger.addHandler(self)
        return self.messages

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
