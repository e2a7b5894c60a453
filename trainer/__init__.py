"""What runs inside a training process: ``python -m trainer --config FILE --attempt-dir DIR``.

It builds the Lightning run a job config describes and adds, without the
user's code knowing, what the supervisor relies on: a checkpoint manifest, a
heartbeat, an exit record, signal handling and W&B run continuity. Layers, top
down (``[tool.importlinter]`` in pyproject.toml checks them): the entry points
(``trainer.cli``, ``trainer.zygote``, ``trainer.inspect.cli``), the standby
(``trainer.standby``), the attempt's lifecycle (``trainer.attempt``), the fit
(``trainer.fit``, ``trainer.callbacks``), the inspection tools, and the library
(``trainer.job``, ``trainer.build``, ...).

This package module stays free of torch imports: the daemon side may import
the package name (e.g. to locate it) without paying for torch.
"""

__all__: list[str] = []
