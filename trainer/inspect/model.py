"""``inspect model``: the module's layers, parameter counts, output shapes, and FLOPs for one real batch.

The layer list and parameter counts are Lightning's ``ModelSummary`` (no batch
needed); the output shapes come from forward hooks during one forward of a real
batch from the config's DataModule; the FLOPs are counted by PyTorch's own
``torch.utils.flop_counter.FlopCounterMode`` during that same forward (a matrix
multiply of (B, n) by (n, m) counts 2·B·n·m), not estimated from the layer types.
A module without a ``forward`` of its own (Lightning's intro writes ``LitAutoEncoder``
so: ``training_step`` calls its submodules) is measured on what a fit runs instead:
its ``training_step`` on one batch, under ``no_grad``; ``ModelReport.measured`` says which.
"""

from __future__ import annotations

import inspect as pyinspect
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from supervisor.errors import ConfigError
from trainer.inspect.common import choose_device
from trainer.inspect.data import first_batch
from trainer.inspect.wandb_log import log_to_wandb
from trainer.job import LoadedJob, guarded, load_job

NO_INPUT_HINT = ("set `example_input_array` on the module (a tensor, a tuple of positional arguments, "
                 "or a dict of keyword arguments for forward)")
FORWARD = "forward"
TRAINING_STEP = "training_step"  # no forward of the module's own: one training_step (no_grad), as a fit runs it


@dataclass
class LayerRow:
    """One row of the layer table."""

    name: str
    type: str
    params: int
    trainable: int
    output_shape: Any = None  # a list of ints, a list of such lists for several outputs, or None (not run)
    flops: int = 0  # counted inside this module during the forward (its children included)


@dataclass
class ModelReport:
    """What ``inspect model`` found (its ``--json`` is ``asdict`` of this)."""

    model_class: str
    total_params: int
    trainable_params: int
    batch_size: int | None
    input_shape: Any
    output_shape: Any
    flops: int
    device: str
    input_source: str  # "example_input_array", "batch[0]", "batch keys: ..." or "batch"
    layers: list[LayerRow] = field(default_factory=list)
    # what ran for the shapes and FLOPs: "forward", or "training_step" for a module without a forward of its own
    # (output_shape is then training_step's return value: the loss, or its dict of outputs)
    measured: str = FORWARD
    onnx: str | None = None
    wandb_run: str | None = None  # the W&B run the ONNX file was saved in

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values (``--json``)."""
        return asdict(self)


def inspect_model(config: str, overrides: Sequence[str] = (), *, cpu: bool = False, depth: int = -1,
                  split: str = "train", onnx: str | Path | None = None, log_wandb: bool = True) -> ModelReport:
    """Build the config's module and DataModule, run one real batch through ``forward``, and report.

    A module without a ``forward`` of its own runs its ``training_step`` on the batch instead
    (``has_own_forward``; the report's ``measured`` says so).
    ``depth``: how deep the layer table goes (``-1``: every module, as ``ModelSummary(max_depth=-1)``).
    ``onnx``: also export the module to this ONNX file with that batch (needs the ``onnx`` package),
    and save it in a W&B run of the job's project when W&B is on and ``log_wandb``.
    """
    loaded = load_job(config, overrides)
    model = loaded.build_model()
    if has_own_forward(model) and getattr(model, "example_input_array", None) is not None:
        batch: Any = None  # the module says what forward takes: no need to touch the data
    else:
        batch = first_batch(loaded, split)
    device = choose_device(loaded.job.trainer_args, cpu)
    report = summarize(model, batch, device=device, depth=depth, source=config)
    if onnx is not None:
        if report.measured != FORWARD:
            raise ConfigError(config, "model", f"{type(model).__name__} has no forward: the ONNX export traces "
                                               "forward (write one that maps the input to the output)")
        path = Path(onnx)
        report.onnx = export_onnx(model, model_input(model, batch, config)[0], path, device, config)
        if log_wandb:
            report.wandb_run = log_onnx_to_wandb(loaded, path)
    return report


def log_onnx_to_wandb(loaded: LoadedJob, path: Path) -> str | None:
    """Save the ONNX file in a run of the job's project (W&B shows it in its model viewer); None when W&B is off."""
    def save(run: Any) -> None:
        run.save(str(path.absolute()), base_path=str(path.absolute().parent), policy="now")

    return log_to_wandb(loaded, path.absolute().parent, "inspect-model", save)


def model_input(model: nn.Module, batch: Any, source: str = "<module>") -> tuple[Any, str]:
    """What to pass to ``forward`` and where it came from.

    The module's ``example_input_array`` when it has one; else the first element of a
    tuple/list batch; for a dict batch, the keys named like ``forward``'s parameters;
    a bare tensor batch as it is.
    """
    example = getattr(model, "example_input_array", None)
    if example is not None:
        return example, "example_input_array"
    if isinstance(batch, Tensor):
        return batch, "batch"
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], "batch[0]"
    if isinstance(batch, Mapping):
        params = pyinspect.signature(model.forward).parameters
        names = [n for n in params if n in batch]
        if names:
            return {n: batch[n] for n in names}, "batch keys: " + ", ".join(names)
        raise ConfigError(source, "model", f"the batch is a dict with keys {sorted(map(str, batch))} and none is "
                          f"a parameter of {type(model).__name__}.forward{pyinspect.signature(model.forward)}: "
                          + NO_INPUT_HINT)
    raise ConfigError(source, "model", f"cannot tell forward's input from a batch of type {type(batch).__name__}: "
                      + NO_INPUT_HINT)


def call_forward(model: nn.Module, inputs: Any) -> Any:
    """``forward`` the way Lightning's ModelSummary calls it: a tuple is positional, a dict keyword arguments."""
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def has_own_forward(model: nn.Module) -> bool:
    """Whether the module's class (or a base of the user's) defines ``forward``: Lightning's and torch's own
    only raise ``NotImplementedError`` (``LightningModule.forward`` passes to ``nn.Module``'s)."""
    for cls in type(model).__mro__:
        if cls.__module__.split(".")[0] in ("torch", "pytorch_lightning", "lightning"):
            return False  # reached the libraries' classes: nothing of the user's defines forward
        if "forward" in vars(cls):
            return True
    return False


def summarize(model: nn.Module, batch: Any, *, device: torch.device | None = None, depth: int = -1,
              source: str = "<module>") -> ModelReport:
    """The layer table, totals and FLOPs of ``model`` for one forward of ``batch`` (in eval mode, no grad).

    A module without a forward of its own (``has_own_forward``) runs ``training_step(batch, 0)`` instead, as the
    fit calls it (its ``self.log`` is a no-op outside a Trainer): the shapes and FLOPs are then that step's.
    """
    from pytorch_lightning.utilities.model_summary import ModelSummary  # Lightning: once the job's env is applied

    measured = FORWARD if has_own_forward(model) else TRAINING_STEP
    if measured == TRAINING_STEP:
        if batch is None:
            raise ConfigError(source, "model", f"{type(model).__name__} has no forward, and its training_step "
                                               "needs a batch from the data")
        inputs, input_source = batch, "batch (training_step)"
        run = "training_step on one batch"
    else:
        inputs, input_source = model_input(model, batch, source)
        run = "forward on one batch"
    device = device or torch.device("cpu")
    summary = ModelSummary(model, max_depth=depth)  # type: ignore[arg-type]
    modules = dict(model.named_modules())
    shapes: dict[str, Any] = {}
    hooks = [modules[name].register_forward_hook(_shape_recorder(shapes, name))
             for name in summary.layer_names if name in modules]
    was_training = model.training
    model.to(device)
    model.eval()  # dropout and batch-norm updates off: this is a look, not a step
    try:
        moved = _to_device(inputs, device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            if measured == TRAINING_STEP:
                output = guarded(source, "model", run, lambda: _call_training_step(model, moved))
            else:
                output = guarded(source, "model", run, lambda: call_forward(model, moved))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    per_module = _flops_by_module(counter, model)
    layers = []
    for name, type_name, params in zip(summary.layer_names, summary.layer_types, summary.param_nums, strict=True):
        module = modules.get(name)
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad) if module is not None else 0
        layers.append(LayerRow(name=name, type=type_name, params=int(params), trainable=int(trainable),
                               output_shape=shapes.get(name), flops=per_module.get(name, 0)))
    input_shape = shape_of(inputs)
    return ModelReport(
        model_class=f"{type(model).__module__}.{type(model).__qualname__}",
        total_params=int(sum(p.numel() for p in model.parameters())),
        trainable_params=int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        batch_size=_batch_size(inputs),
        input_shape=input_shape,
        output_shape=shape_of(output),
        flops=int(counter.get_total_flops()),
        device=str(device),
        input_source=input_source,
        layers=layers,
        measured=measured,
    )


def _call_training_step(model: nn.Module, batch: Any) -> Any:
    """``training_step(batch, 0)`` called through the module's ``__call__`` (a forward standing in for it): the FLOP
    counter names modules by the path from the module that was called, so the root must be called for the
    layers to be told apart by name (``LitAutoEncoder.encoder.0``, not two ``Sequential``)."""
    step = getattr(model, "training_step", None)
    if step is None:
        raise NotImplementedError(f"{type(model).__name__} has neither forward nor training_step")
    model.forward = lambda: step(batch, 0)  # this instance, this call only
    try:
        with warnings.catch_warnings():  # outside a Trainer, self.log() warns that it logs nothing: it is meant to
            warnings.simplefilter("ignore")
            return model()
    finally:
        del model.forward


def shape_of(value: Any) -> Any:
    """A tensor's shape as a list; for tuples, lists and dicts, the same structure of shapes; else None."""
    if isinstance(value, Tensor):
        return list(value.shape)
    if isinstance(value, (tuple, list)):
        return [shape_of(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): shape_of(v) for k, v in value.items()}
    return None


def export_onnx(model: nn.Module, inputs: Any, path: Path, device: torch.device, source: str) -> str:
    """Export ``model`` to ONNX at ``path`` with ``inputs`` (needs the ``onnx`` package); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    kwargs = dict(inputs) if isinstance(inputs, Mapping) else None
    was_training = model.training
    model.eval()
    try:
        guarded(source, "model", "ONNX export", lambda: torch.onnx.export(
            model, () if kwargs is not None else _to_device(args, device), str(path),
            kwargs=_to_device(kwargs, device) if kwargs is not None else None, dynamo=False))
    finally:
        model.train(was_training)
    return str(path)


def _shape_recorder(shapes: dict[str, Any], name: str) -> Any:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        shapes[name] = shape_of(output)

    return hook


def _flops_by_module(counter: FlopCounterMode, model: nn.Module) -> dict[str, int]:
    """FLOPs per module, keyed by ``named_modules`` names ('' for the root).

    The counter names modules by their path under the root's class name
    (``DigitsClassifier.net.0``) and also keeps a ``Global`` total.
    """
    root = type(model).__name__
    out: dict[str, int] = {}
    for key, by_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = key[len(root) + 1:] if key.startswith(root + ".") else ("" if key == root else key)
        out[name] = int(sum(by_op.values()))
    return out


def _batch_size(inputs: Any) -> int | None:
    if isinstance(inputs, Tensor):
        return int(inputs.shape[0]) if inputs.dim() > 0 else None
    values = inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (tuple, list)) else []
    for value in values:
        size = _batch_size(value)
        if size is not None:
            return size
    return None


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value
