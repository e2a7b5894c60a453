"""``callbacks.log_samples``: a small W&B table of validation inputs, predictions and targets each epoch.

Off by default. Each validation epoch (not the sanity check) the first
validation batch's first ``count`` items go to the run as ``val_samples``: the
batch's fields as ``inspect data`` shows them (images as ``wandb.Image``), plus
the module's predictions:

- a classifier (``forward`` returns (B, C) with C > 1 and the batch has integer
  targets): the predicted class and its softmax probability;
- otherwise the output of the module's own ``predict_step`` for that batch;
- otherwise there is nothing to show, and ``--check`` refuses the option at submit
  (``check_log_samples``), before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from supervisor.errors import ConfigError
from trainer.inspect.data import first_batch
from trainer.inspect.fields import Field, fields_of, label_field, short_text
from trainer.inspect.model import call_forward, model_input
from trainer.inspect.tables import samples_table
from trainer.job import LoadedJob, guarded

TABLE_KEY = "val_samples"


class PredictionError(ValueError):
    """The module gives no prediction the table can show."""


def is_classifier_output(output: Any, labels: Field | None) -> bool:
    """(B, C) logits with C > 1, next to integer class targets."""
    return isinstance(output, Tensor) and output.dim() == 2 and output.shape[1] > 1 and labels is not None


def defines_predict_step(module: pl.LightningModule) -> bool:
    """Whether the module overrides Lightning's default ``predict_step``."""
    return type(module).predict_step is not pl.LightningModule.predict_step


def predictions(module: pl.LightningModule, batch: Any, batch_idx: int, fields: list[Field], count: int
                ) -> dict[str, list[Any]]:
    """The prediction columns for the first ``count`` items of ``batch`` (see the module doc)."""
    labels = label_field(fields)
    with torch.no_grad():
        inputs = _batch_input(module, batch)
        output = call_forward(module, inputs) if inputs is not None else None
        if isinstance(output, Tensor) and is_classifier_output(output, labels):
            probabilities = torch.softmax(output[:count].float(), dim=1)  # (B, C) logits -> (B, C)
            best, predicted = probabilities.max(dim=1)  # (B, C) -> (B,), (B,)
            return {"prediction": [int(v) for v in predicted.tolist()],
                    "probability": [round(float(v), 4) for v in best.tolist()]}
        if defines_predict_step(module):
            predicted_any = module.predict_step(batch, batch_idx)
            return {"prediction": _per_item(predicted_any, count)}
    raise PredictionError(
        f"{type(module).__name__} is not a classifier (forward gives {_shape_text(output)}"
        f"{'' if labels is not None else ', and the batch has no integer targets'}) and defines no predict_step")


class LogSamples(Callback):
    """Logs ``val_samples`` (a ``wandb.Table``) after the first validation batch of each epoch (rank 0)."""

    def __init__(self, logger: Any, count: int = 16) -> None:
        self.logger = logger
        self.count = count
        self.disabled_reason: str | None = None

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self.disabled_reason is not None:
            return
        datamodule = getattr(trainer, "datamodule", None)  # set by fit(datamodule=...); not in Trainer's stubs
        image_shape = getattr(datamodule, "image_shape", None)
        fields = fields_of([batch], self.count, image_shape)
        count = max((len(f.items) for f in fields), default=0)
        try:
            extra = predictions(pl_module, batch, batch_idx, fields, count)
        except PredictionError as exc:  # checked at submit; a module may still change its mind at run time
            self.disabled_reason = str(exc)
            print(f"[trainer] callbacks.log_samples: off: {exc}", flush=True)
            return
        self.logger.log_metrics({TABLE_KEY: samples_table(fields, extra)}, step=trainer.global_step)


def check_log_samples(loaded: LoadedJob) -> None:
    """At submit (``--check``): refuse ``log_samples`` when W&B is off or the module has no prediction to show.

    Builds the module and the DataModule and runs one validation batch through forward (on the CPU).
    """
    source = loaded.source
    if str(loaded.cfg.logger.wandb.mode) == "disabled":
        raise ConfigError(source, "callbacks.log_samples", "needs W&B: logger.wandb.mode is disabled")
    model = loaded.build_model()
    if defines_predict_step(model):
        return
    batch = first_batch(loaded, "val")
    fields = fields_of([batch], 2, None)
    model.eval()
    inputs = _batch_input(model, batch)
    with torch.no_grad():
        output = guarded(source, "model", "forward on one validation batch", lambda: call_forward(model, inputs))
    if not is_classifier_output(output, label_field(fields)):
        raise ConfigError(source, "callbacks.log_samples",
                          f"{type(model).__name__} is not a classifier (forward gives {_shape_text(output)}, "
                          "expected (B, C) logits and integer targets) and defines no predict_step: "
                          "define predict_step to say what to show, or leave log_samples off")


def _batch_input(module: pl.LightningModule, batch: Any) -> Any:
    """Forward's input taken from the batch itself (never ``example_input_array``: we want these items)."""
    saved = getattr(module, "_example_input_array", None)
    try:
        module._example_input_array = None
        return model_input(module, batch)[0]
    except ConfigError:
        return None
    finally:
        module._example_input_array = saved


def _per_item(value: Any, count: int) -> list[Any]:
    if isinstance(value, Tensor):
        value = value.detach().cpu()
        return [v.item() if v.dim() == 0 else short_text(v.tolist()) for v in value[:count]]
    if isinstance(value, (list, tuple)):
        return [short_text(v.tolist() if isinstance(v, Tensor) else v) for v in value[:count]]
    if isinstance(value, Mapping):
        return [short_text({k: _per_item(v, count)[i] for k, v in value.items()}) for i in range(count)]
    return [short_text(value)] * count


def _shape_text(output: Any) -> str:
    if isinstance(output, Tensor):
        return "(" + ", ".join(str(s) for s in output.shape) + ")"
    return "no input it can take" if output is None else type(output).__name__
