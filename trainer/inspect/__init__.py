"""Look before you train: the data, the model and the learning rate of a job config.

Importable for notebooks (each loads the config as ``python -m trainer`` does)::

    from trainer.inspect import inspect_data, inspect_model, find_lr
    inspect_model("configs/digits.yaml", cpu=True).flops

The command line is ``python -m trainer inspect data|model`` and
``python -m trainer tune lr`` (``trainer/inspect/cli.py``). This package imports
torch only when one of these functions is called.
"""

from __future__ import annotations

from typing import Any


def inspect_data(*args: Any, **kwargs: Any) -> Any:
    """See ``trainer.inspect.data.inspect_data``."""
    from trainer.inspect.data import inspect_data as run

    return run(*args, **kwargs)


def inspect_model(*args: Any, **kwargs: Any) -> Any:
    """See ``trainer.inspect.model.inspect_model``."""
    from trainer.inspect.model import inspect_model as run

    return run(*args, **kwargs)


def find_lr(*args: Any, **kwargs: Any) -> Any:
    """See ``trainer.inspect.lr.find_lr``."""
    from trainer.inspect.lr import find_lr as run

    return run(*args, **kwargs)


__all__ = ["find_lr", "inspect_data", "inspect_model"]
