"""ml-supervisor: a fault-tolerant supervisor for PyTorch Lightning training.

This package is the daemon side. It must never import torch or Lightning: the
modules here are light so that the daemon starts fast, stays small, and a crashed
CUDA library can never take it down. ``supervisor.config`` and
``supervisor.jobfiles`` are the public contracts the trainer package shares.
"""

__version__ = "0.2.0"
