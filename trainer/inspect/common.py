"""What the inspection commands share beyond loading the job (``trainer.job``): the device and Trainer arguments.

An inspection is one process on one device: the config's accelerator when it is
there (or ``--cpu``), never its DDP launch.
"""

from __future__ import annotations

from typing import Any


def choose_device(trainer_args: dict[str, Any], force_cpu: bool) -> Any:
    """The ``torch.device`` the config's accelerator means here: CUDA when asked for (or ``auto``) and present."""
    import torch  # when called: the package and its command line stay torch-free at import

    accelerator = str(trainer_args.get("accelerator", "auto")).lower()
    if not force_cpu and accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def cpu_trainer_args(trainer_args: dict[str, Any], force_cpu: bool) -> dict[str, Any]:
    """The config's Trainer arguments, on one device, and on the CPU when ``force_cpu``."""
    args = dict(trainer_args)
    if force_cpu:
        args["accelerator"] = "cpu"
    args["devices"] = 1  # an inspection is one process: no DDP launch
    args.pop("strategy", None)
    args.pop("num_nodes", None)
    return args
