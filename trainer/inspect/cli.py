"""``python -m trainer inspect data|model`` and ``python -m trainer tune lr``: the checks before a long run.

    python -m trainer inspect data CONFIG [key=value ...] [--split train|val|test|predict] [-n 16] [--out DIR]
    python -m trainer inspect model CONFIG [key=value ...] [--depth N] [--onnx FILE]
    python -m trainer tune lr CONFIG [key=value ...] [--out DIR] [--steps 100] [--min-lr X] [--max-lr X]
                                 [--verify [N]] [--verify-steps K]
    (each also takes --cpu and --json)

``ml-supervisor inspect ...`` / ``ml-supervisor tune lr`` run these under the
job's ``python``. Exit codes: 0 done, 2 a bad config (one line naming the file
and the key). With ``--json``, stdout holds exactly one JSON object; anything
Lightning prints goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from supervisor.errors import ConfigError
from supervisor.jobfiles.layout import EXIT_COMPLETED, EXIT_CONFIG_ERROR
from trainer.inspect.lr_rules import VERIFY_STEPS, VERIFY_TOP  # torch-free, as this module must stay

COMMANDS = ("inspect", "tune")


LEAVES = {("inspect", "data"): "sample a split, plot it, count its labels",
          ("inspect", "model"): "layer table, parameter counts and FLOPs for one real batch",
          ("tune", "lr"): "Lightning's learning-rate finder, read by several rules (and --verify: short fits)"}


def build_parser(command: str, what: str) -> argparse.ArgumentParser:
    """The command line of one inspection command (``inspect data``, ``inspect model``, ``tune lr``)."""
    p = argparse.ArgumentParser(prog=f"python -m trainer {command} {what}", description=LEAVES[(command, what)])
    _common(p)
    if (command, what) == ("inspect", "data"):
        p.add_argument("--split", default="train", choices=("train", "val", "test", "predict"))
        p.add_argument("-n", type=int, default=16, help="samples to draw (default 16)")
        p.add_argument("--out", default="inspect", help="where samples.png and samples.html go (default ./inspect)")
        p.add_argument("--no-wandb", action="store_true", help="do not log the samples table to W&B")
    elif (command, what) == ("inspect", "model"):
        p.add_argument("--depth", type=int, default=-1, help="layer table depth (-1: every module; 1: top level)")
        p.add_argument("--split", default="train", choices=("train", "val", "test", "predict"),
                       help="the split the batch comes from")
        p.add_argument("--onnx", default=None, metavar="FILE", help="also export the model to this ONNX file "
                       "(needs the onnx package) and save it in W&B when the config has W&B on")
        p.add_argument("--no-wandb", action="store_true", help="do not save the ONNX file in W&B")
    else:
        p.add_argument("--out", default="inspect", help="where lr_find.png goes (default ./inspect)")
        p.add_argument("--steps", type=int, default=100, help="finder steps (default 100)")
        p.add_argument("--min-lr", type=float, default=1e-8, help="the finder's first rate (default 1e-8)")
        p.add_argument("--max-lr", type=float, default=1.0, help="the finder's last rate (default 1)")
        p.add_argument("--verify", nargs="?", const=str(VERIFY_TOP), default="0", metavar="N",
                       help=f"also train briefly at the top N suggestions (default {VERIFY_TOP}) and at the "
                       "config's rate, and name the one with the best validation metric")
        p.add_argument("--verify-steps", type=int, default=VERIFY_STEPS, metavar="K",
                       help=f"steps of each --verify fit (default {VERIFY_STEPS})")
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="the job config (YAML)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (OmegaConf dotlist)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU whatever the config's accelerator")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def main(argv: Sequence[str]) -> int:
    """Run an inspection command; returns the exit code."""
    argv = list(argv)
    if tuple(argv[:2]) not in LEAVES:
        choices = ", ".join(" ".join(k) for k in LEAVES)
        print(f"python -m trainer: error: expected one of: {choices}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    args = build_parser(argv[0], argv[1]).parse_intermixed_args(argv[2:])
    args.command, args.what = argv[0], argv[1]
    if args.command == "tune" and not _verify_count(args):
        print(f"{args.config}: --verify: expected a number of suggestions to try, got {args.verify!r}",
              file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if getattr(args, "n", 1) < 1:
        print(f"{args.config}: -n: expected a positive number of samples, got {args.n}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    real_stdout = sys.stdout
    try:
        # --json: stdout carries the one object; whatever Lightning or the user's code prints goes to stderr
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            report = _run(args)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    if args.json:
        print(json.dumps(report.as_dict()), file=real_stdout, flush=True)
    else:
        _print(args, report)
    return EXIT_COMPLETED


def _verify_count(args: argparse.Namespace) -> bool:
    """``--verify`` takes an optional number: a ``key=value`` right after it is an override, not N."""
    if "=" in args.verify and not args.verify.startswith("-"):
        args.overrides.append(args.verify)
        args.verify = str(VERIFY_TOP)
    try:
        args.verify = int(args.verify)
    except ValueError:
        return False
    return args.verify >= 0 and args.verify_steps > 0


def _run(args: argparse.Namespace) -> Any:
    if args.command == "tune":
        from trainer.inspect.lr import find_lr  # the commands import torch: only the one that runs

        return find_lr(args.config, args.overrides, cpu=args.cpu, out=args.out, steps=args.steps,
                       min_lr=args.min_lr, max_lr=args.max_lr, verify=args.verify, verify_steps=args.verify_steps)
    if args.what == "data":
        from trainer.inspect.data import inspect_data

        return inspect_data(args.config, args.overrides, split=args.split, n=args.n, out=args.out,
                            log_wandb=not args.no_wandb)
    from trainer.inspect.model import inspect_model

    return inspect_model(args.config, args.overrides, cpu=args.cpu, depth=args.depth, split=args.split,
                         onnx=args.onnx, log_wandb=not args.no_wandb)


def _print(args: argparse.Namespace, report: Any) -> None:
    from rich.console import Console  # the tables only (not --json)

    from trainer.inspect import show

    console = Console(width=max(100, Console().width))
    if args.command == "tune":
        show.print_lr(console, report)
    elif args.what == "data":
        show.print_data(console, report)
    else:
        show.print_model(console, report)
