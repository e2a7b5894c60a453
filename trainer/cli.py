"""``python -m trainer``: run (or ``--check``) one attempt of a job.

    python -m trainer --config FILE --attempt-dir DIR [--checkpoint-dir DIR] [--ckpt PATH]
                      [--attempt N] [--restarts N] [--deadline UNIX_TIME] [--check] [--standby] [key=value ...]
    python -m trainer inspect data|model CONFIG ... | python -m trainer tune lr CONFIG ...  (trainer.inspect.cli)

Exit codes: 0 completed (or ``--check`` passed), 1 exception, 2 config error,
128 + signal number after a stop signal (143 for SIGTERM, 130 for SIGINT).
Whatever the exit code, ``<attempt-dir>/exit.json`` (``exit.rank<N>.json`` for
rank N > 0 of several) says how the attempt ended (``trainer.attempt``).
Torch-free at import, like everything it imports.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from supervisor.errors import ConfigError
from supervisor.jobfiles.layout import EXIT_COMPLETED, EXIT_CONFIG_ERROR
from trainer.attempt import run_attempt
from trainer.inspect.cli import COMMANDS as INSPECT_COMMANDS
from trainer.inspect.cli import main as inspect_main
from trainer.job import load_config
from trainer.standby import serve


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m trainer`` (the zygote parses its standbys' with it too)."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Run one supervised attempt of a Lightning job config (or check the config).",
    )
    parser.add_argument("--config", required=True, help="the job config (YAML)")
    parser.add_argument("--attempt-dir", help="where heartbeat.json, exit.json, ... go (required unless --check)")
    parser.add_argument("--checkpoint-dir", help="checkpoint directory (default: <attempt-dir>/checkpoints)")
    parser.add_argument("--ckpt", help="checkpoint to resume from")
    parser.add_argument("--attempt", type=int, default=1, help="attempt number (default 1)")
    parser.add_argument("--restarts", type=int, default=0, help="restarts the job has had (recorded in W&B)")
    parser.add_argument("--deadline", type=float, help="unix time the job's budget ends; the fit stops before it")
    parser.add_argument("--checkpoint-every", type=int,
                        help="checkpoint.every_n_train_steps: auto's interval in force, chosen by the daemon")
    parser.add_argument("--skip-batches", type=int, default=0,
                        help="a rollback after a divergence: drop this many training batches first")
    parser.add_argument("--lr-scale", type=float, default=1.0,
                        help="a rollback after a divergence: multiply the learning rates by this, once")
    parser.add_argument("--devices", type=int,
                        help="elastic DDP: this attempt's world size, in place of trainer.devices (the daemon's)")
    parser.add_argument("--accumulate-grad-batches", type=int,
                        help="elastic DDP: the accumulation that keeps the configured global batch at --devices")
    parser.add_argument("--check", action="store_true", help="validate the config and its classes, do not fit")
    parser.add_argument("--standby", action="store_true",
                        help="prepare (imports, model, data), then wait for the daemon's handover (trainer.standby)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (OmegaConf dotlist)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    started_at = time.time()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in INSPECT_COMMANDS:  # the checks before a run
        return inspect_main(argv)
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.check:
        return check(args.config, args.overrides)
    if not args.attempt_dir:
        parser.error("--attempt-dir is required (unless --check)")
    if args.standby:
        return serve(args, parser)
    return run_attempt(args, started_at)


def check(config: str, overrides: Sequence[str]) -> int:
    """``--check``: load the config, import and check what it names. 0 if fine, 2 with one line if not."""
    try:
        cfg = load_config(config, overrides)
        from trainer.fit import check_job  # torch and Lightning: only after the config's env is applied

        check_job(cfg, config)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR
    print(f"{config}: ok", flush=True)
    return EXIT_COMPLETED


if __name__ == "__main__":  # pragma: no cover - use python -m trainer
    sys.exit(main())
