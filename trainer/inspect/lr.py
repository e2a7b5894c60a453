"""``tune lr``: Lightning's learning-rate finder (``Tuner.lr_find``) on the job config, read by several rules.

The finder trains for ``steps`` steps while raising the learning rate
exponentially and records the loss; ``trainer.inspect.lr_rules`` reads that
curve (valley, steepest fall within the descent, minimum ÷ 10, and Lightning's
own rule) and picks a default, or says why the curve gives none. ``verify``
then trains briefly at the top suggestions and at the config's rate and names
the one that did best on the job's validation metric.

The module must expose ``lr`` or ``learning_rate`` (an attribute or a saved
hyperparameter) and read it in ``configure_optimizers``. Everything is seeded
from the config's ``seed`` (0 when it has none): the same config gives the same
curve. The module's weights are restored after the finder; nothing is
checkpointed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from supervisor.errors import ConfigError
from trainer.inspect.common import cpu_trainer_args
from trainer.inspect.lr_rules import VERIFY_STEPS, Reading, read_curve
from trainer.job import LoadedJob, guarded, load_job

LR_NAMES = ("lr", "learning_rate")
SAME_RATE = 0.1  # rates within 10% of each other are verified once


@dataclass
class VerifyRun:
    """One short fit of ``--verify``: the rate, what suggested it, and the validation metric after it."""

    lr: float
    labels: list[str]  # the rules that suggested it, and/or "config"
    value: float | None  # the job's validation metric after the fit (None: not finite)
    winner: bool = False


@dataclass
class Verification:
    """The short fits of ``--verify``: the same config, ``steps`` steps each, compared on ``monitor``."""

    monitor: str
    mode: str  # min | max
    steps: int
    runs: list[VerifyRun] = field(default_factory=list)

    @property
    def winner(self) -> VerifyRun | None:
        return next((r for r in self.runs if r.winner), None)


@dataclass
class LrReport:
    """What ``tune lr`` found (its ``--json`` is ``as_dict()``)."""

    suggested_lr: float | None  # the default suggestion (None: the curve says nothing; see reason)
    override: str | None  # model.init_args.<name>=<value> for the rate to use: verify's winner, else the default
    attr_name: str
    plot: str
    points: int  # finite (lr, loss) points recorded
    reason: str | None = None  # why there is no default suggestion
    default_rule: str | None = None
    suggestions: list[dict[str, Any]] = field(default_factory=list)  # {rule, lr, description, before_descent, default}
    descent: dict[str, float] | None = None  # {from_lr, to_lr, drop}: where the smoothed loss falls
    warnings: list[str] = field(default_factory=list)
    config_lr: float | None = None
    seed: int = 0
    verify: Verification | None = None

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values (``--json``)."""
        return asdict(self)


def lr_attribute(model: Any) -> str | None:
    """The name under which ``model`` exposes its learning rate (as Lightning's finder looks it up), or None."""
    from pytorch_lightning.utilities.parsing import lightning_hasattr  # Lightning: after the job's env is applied

    return next((name for name in LR_NAMES if lightning_hasattr(model, name)), None)


def find_lr(config: str, overrides: Sequence[str] = (), *, cpu: bool = False, out: str | Path = "inspect",
            steps: int = 100, min_lr: float = 1e-8, max_lr: float = 1.0, verify: int = 0,
            verify_steps: int = VERIFY_STEPS) -> LrReport:
    """Run ``Tuner.lr_find`` on the config's module and data, read the curve, write ``out/lr_find.png``.

    ``verify``: also train ``verify_steps`` steps at each of the top ``verify`` suggestions and at the
    config's rate (see ``verify_rates``); the override then names the winner.
    """
    import pytorch_lightning as pl  # after load_job applied the job's env (as every Lightning import here)
    from pytorch_lightning.tuner import Tuner
    from pytorch_lightning.utilities.parsing import lightning_getattr

    loaded = load_job(config, overrides)
    seed = _seed(loaded)
    pl.seed_everything(seed, workers=True, verbose=False)
    model = loaded.build_model()
    datamodule = loaded.build_data()
    attr = lr_attribute(model)
    if attr is None:
        raise ConfigError(config, "model", f"{type(model).__name__} exposes no `lr` or `learning_rate` (an "
                          "attribute, or a hyperparameter saved with save_hyperparameters()): the finder sets "
                          "one of them, and configure_optimizers must read it")
    config_lr = _number(lightning_getattr(model, attr))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    args = _trainer_args(loaded, cpu)
    args["max_epochs"] = -1  # the finder's steps, however many epochs they take (a short max_epochs cut it off)
    args.pop("max_steps", None)
    with tempfile.TemporaryDirectory(prefix="lr-find-") as scratch, _LightningErrors() as messages, _quiet():
        trainer = pl.Trainer(**args, default_root_dir=scratch)
        finder = guarded(config, "model", "Tuner.lr_find", lambda: Tuner(trainer).lr_find(
            model, datamodule=datamodule, num_training=steps, min_lr=min_lr, max_lr=max_lr,
            attr_name=attr, update_attr=False))
        if finder is None:
            raise ConfigError(config, "trainer", "Tuner.lr_find ran no steps (trainer.fast_dev_run is set?)")
    reading = read_curve(finder.results.get("lr", []), finder.results.get("loss", []))
    points = sum(1 for v in reading.recorded if math.isfinite(v))
    reason = reading.reason
    if reason is not None and messages and reading.default is None:
        reason += f" ({messages[-1]})"
    report = LrReport(
        suggested_lr=reading.default.lr if reading.default else None, override=None, attr_name=attr,
        plot=str(out_dir / "lr_find.png"), points=points, reason=reason,
        default_rule=reading.default.rule if reading.default else None,
        suggestions=[{"rule": s.rule, "lr": s.lr, "description": s.description, "before_descent": s.before_descent,
                      "default": s is reading.default} for s in reading.suggestions],
        descent=None if reading.descent is None else {
            "from_lr": reading.lrs[reading.descent.start], "to_lr": reading.lrs[reading.descent.end],
            "drop": reading.descent.drop},
        warnings=list(reading.warnings), config_lr=config_lr, seed=seed)
    if verify > 0:
        candidates = _verify_candidates(reading, verify, config_lr)
        if candidates:
            report.verify = verify_rates(config, overrides, candidates, cpu=cpu, steps=verify_steps, loaded=loaded,
                                         datamodule=datamodule)
    use = report.verify.winner.lr if report.verify and report.verify.winner else report.suggested_lr
    report.override = f"model.init_args.{attr}={use:.3g}" if use is not None else None
    from trainer.inspect.lr_plot import write_plot  # matplotlib: slow to import

    write_plot(reading, Path(report.plot), config_lr=config_lr, verification=report.verify)
    return report


def verify_rates(config: str, overrides: Sequence[str], rates: Sequence[tuple[float, list[str]]], *,
                 cpu: bool = False, steps: int = VERIFY_STEPS, loaded: LoadedJob | None = None,
                 datamodule: Any = None) -> Verification:
    """Train ``steps`` steps from the same start (seeded) at each rate, then validate; the best metric wins.

    ``rates``: (rate, labels) pairs. The metric is the job's: ``checkpoint.monitor`` (else
    ``callbacks.early_stopping.monitor``, else ``val_loss``) with its mode.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.utilities.parsing import lightning_setattr

    loaded = loaded or load_job(config, overrides)
    seed = _seed(loaded)
    monitor, mode = _monitor(loaded)
    if datamodule is None:
        pl.seed_everything(seed, workers=True, verbose=False)
        datamodule = loaded.build_data()
    result = Verification(monitor=monitor, mode=mode, steps=steps)
    for lr, labels in rates:
        pl.seed_everything(seed, workers=True, verbose=False)  # each fit from the same weights and batch order
        model = loaded.build_model()
        attr = lr_attribute(model)
        if attr is None:
            raise ConfigError(config, "model", f"{type(model).__name__} exposes no `lr` or `learning_rate`")
        lightning_setattr(model, attr, lr)
        args = _trainer_args(loaded, cpu)
        limit_val = args.pop("limit_val_batches", 1.0)
        args.update(max_steps=steps, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0)
        with tempfile.TemporaryDirectory(prefix="lr-verify-") as scratch, _quiet():
            trainer = pl.Trainer(**args, default_root_dir=scratch)
            guarded(config, "model", f"the short fit at lr {lr:.3g}",
                    lambda: trainer.fit(model, datamodule=datamodule))  # noqa: B023 (called at once)
            trainer.limit_val_batches = limit_val
            guarded(config, "model", f"validating after the short fit at lr {lr:.3g}",
                    lambda: trainer.validate(model, datamodule=datamodule, verbose=False))  # noqa: B023
        metrics = trainer.callback_metrics
        if monitor not in metrics:
            logged = ", ".join(sorted(metrics)) or "nothing"
            raise ConfigError(config, "checkpoint.monitor", f"--verify compares {monitor!r} after validation, "
                              f"and the module logged {logged} there: set checkpoint.monitor to a validation metric")
        value = float(metrics[monitor])
        result.runs.append(VerifyRun(lr=lr, labels=list(labels), value=value if math.isfinite(value) else None))
    scored = [r for r in result.runs if r.value is not None]
    if scored:
        best = (min if mode == "min" else max)(scored, key=lambda r: r.value if r.value is not None else 0.0)
        best.winner = True
    return result


def _verify_candidates(reading: Reading, top: int, config_lr: float | None) -> list[tuple[float, list[str]]]:
    """The default first, then the other rules in their order; ``top`` distinct rates, then the config's."""
    order = ([reading.default] if reading.default else []) + [s for s in reading.suggestions
                                                               if s is not reading.default]
    chosen: list[tuple[float, list[str]]] = []
    for s in order:
        same = next((c for c in chosen if abs(c[0] - s.lr) <= SAME_RATE * c[0]), None)
        if same is not None:
            same[1].append(s.rule)
        elif len(chosen) < top:
            chosen.append((s.lr, [s.rule]))
    if config_lr is not None and config_lr > 0:  # the config's own rate, unless a suggestion is that rate
        same = next((c for c in chosen if abs(c[0] - config_lr) <= 0.01 * c[0]), None)
        if same is not None:
            same[1].append("config")
        else:
            chosen.append((config_lr, ["config"]))
    return chosen


def _trainer_args(loaded: LoadedJob, cpu: bool) -> dict[str, Any]:
    args = cpu_trainer_args(loaded.job.trainer_args, cpu)
    for key in ("default_root_dir", "logger", "callbacks"):
        args.pop(key, None)
    args.update(enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, logger=False,
                callbacks=[])
    return args


def _seed(loaded: LoadedJob) -> int:
    return int(loaded.cfg.seed) if loaded.cfg.seed is not None else 0


def _monitor(loaded: LoadedJob) -> tuple[str, str]:
    checkpoint = loaded.cfg.get("checkpoint") or {}
    if checkpoint.get("monitor"):
        return str(checkpoint["monitor"]), str(checkpoint.get("mode") or "min")
    stopping = (loaded.cfg.get("callbacks") or {}).get("early_stopping") or {}
    if stopping.get("monitor"):
        return str(stopping["monitor"]), str(stopping.get("mode") or "min")
    return "val_loss", "min"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's INFO lines (devices, tips, "Restored all states") off: a short fit is not the user's run."""
    logger = logging.getLogger("pytorch_lightning")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


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
