"""What both commands share: the state-dir flag, error reporting and submit requests."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from supervisor.core.submit import SubmitRequest, load_request_config
from supervisor.errors import SupervisorError
from supervisor.settings import STATE_DIR_ENV, resolve_state_dir

_STATE_DIR_HELP = (f"state directory (default: ${STATE_DIR_ENV}, else /var/lib/ml-supervisor for root, "
                   "else ~/.local/state/ml-supervisor)")


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    """The global ``--state-dir`` flag (call ``share_global_flags`` once the subcommands are added)."""
    parser.add_argument("--state-dir", default=None, help=_STATE_DIR_HELP)


def share_global_flags(parser: argparse.ArgumentParser) -> None:
    """Accept the global flags after the subcommand too (``serve --state-dir X``, as unit files and people write it).

    Each subcommand gets its own ``--state-dir`` whose default is ``SUPPRESS``, so a
    flag given before the subcommand is not overwritten by the subcommand's absent one.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                if not any("--state-dir" in a.option_strings for a in sub._actions):
                    sub.add_argument("--state-dir", default=argparse.SUPPRESS, help=_STATE_DIR_HELP)
                share_global_flags(sub)


def state_dir_of(args: argparse.Namespace) -> Path:
    return resolve_state_dir(args.state_dir)


def fail(prog: str, exc: SupervisorError) -> NoReturn:
    """Print one line and exit with the error's status: never a traceback at a user."""
    print(f"{prog}: error: {exc.message}", file=sys.stderr)
    sys.exit(exc.exit_status)


def run_guarded(prog: str, fn: Callable[[], int]) -> int:
    try:
        return fn()
    except SupervisorError as exc:
        fail(prog, exc)
    except KeyboardInterrupt:
        return 130


def submit_request(config: str, overrides: list[str], name: str | None) -> SubmitRequest:
    """Read and validate the config here (fast, clear errors even with no daemon), then build the request."""
    path = os.path.abspath(config)
    req = SubmitRequest(config_path=config, cwd=os.getcwd(), overrides=list(overrides), name=name)
    load_request_config(req)  # raises ConfigError naming the file and key
    req.config_text = Path(path).read_text(encoding="utf-8")
    return req
