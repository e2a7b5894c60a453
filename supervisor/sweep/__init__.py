"""Hyperparameter sweeps: a W&B sweep file, searched by Optuna, every trial a supervised job.

The daemon side (``spec``, ``files``, ``manager``, ``ops``) never imports Optuna; the
worker subprocess (``python -m supervisor.sweep.worker``, with ``search``) owns the study.
"""
