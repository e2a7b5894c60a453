"""``ml-supervisor``: run one job in the foreground, or serve as the daemon.

    ml-supervisor run CONFIG [key=value ...] [--name NAME]   one job, fault tolerant, foreground
    ml-supervisor serve [--config daemon.yaml] [key=value]   the daemon (what systemd runs)
    ml-supervisor validate CONFIG [key=value ...]            check a config without running it
    ml-supervisor install-systemd [--user]                   write the systemd unit, print how to start it
    ml-supervisor inspect data|model CONFIG [key=value ...] [options]   look at the data / the model
    ml-supervisor tune lr CONFIG [key=value ...] [options]               Lightning's learning-rate finder
    ml-supervisor examples                                   the bundled example configs and where they are
    ml-supervisor init DIR [--force]                         a starter project to edit (runs as is on a CPU)
    ml-supervisor --version

Exit status of ``run``: 0 completed (finished or budget spent), 1 failed, 2 bad
config, 130 stopped.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from types import FrameType
from typing import Any

from rich.console import Console

from supervisor import __version__
from supervisor.api.client import Client
from supervisor.cli.common import add_state_dir, run_guarded, share_global_flags, state_dir_of, submit_request
from supervisor.cli.render import STATE_STYLE, event_line, job_detail, make_console
from supervisor.config import format_duration
from supervisor.daemon import Daemon
from supervisor.errors import SupervisorError
from supervisor.logsetup import setup_logging
from supervisor.rules.states import TERMINAL_STATES
from supervisor.sdnotify import Notifier
from supervisor.settings import load_settings
from supervisor.systemd_unit import install_unit

PROG = "ml-supervisor"
EXIT_STATUS = {"completed": 0, "failed": 1, "stopped": 130}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Fault-tolerant supervisor for Lightning training.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_state_dir(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run one job in the foreground, restarting it from its best checkpoint")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--name", default=None)
    p.add_argument("--daemon-config", default=None, help="daemon settings YAML (when no daemon is running)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the supervisor's own log")

    p = sub.add_parser("serve", help="run the daemon (systemd runs this)")
    p.add_argument("--config", default=None, help="daemon settings YAML")
    p.add_argument("--web-host", default=None, help="address the web page listens on (default 127.0.0.1; "
                                                     "0.0.0.0 opens it to the network)")
    p.add_argument("settings", nargs="*", metavar="key=value", help="daemon setting overrides")

    p = sub.add_parser("install-systemd", help="write the systemd unit for this interpreter")
    p.add_argument("--user", action="store_true", help="a user unit (no root; runs while you are logged in "
                                                        "or lingering)")

    p = sub.add_parser("validate", help="check a job config (schema and imports) without running it")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="key=value")

    # Run by the job's interpreter as `python -m trainer inspect|tune ...` (the daemon side never imports torch);
    # options and overrides after CONFIG pass through (python -m trainer inspect data -h lists them).
    p = sub.add_parser("inspect", help="look at a config's data (samples, label counts) or model (layers, FLOPs)")
    p.add_argument("what", choices=("data", "model"))
    p.add_argument("config")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="[key=value | option] ...")
    p = sub.add_parser("tune", help="find a learning rate for a config (Lightning's Tuner.lr_find)")
    p.add_argument("what", choices=("lr",))
    p.add_argument("config")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="[key=value | option] ...")

    sub.add_parser("examples", help="list the bundled example configs with their installed paths")
    p = sub.add_parser("init", help="write a starter project (a commented job config and a model file) into DIR")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--force", action="store_true", help="overwrite the starter's files if DIR has them")
    share_global_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(PROG, lambda: _dispatch(args))


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        setup_logging()
        overrides = [*args.settings, *([f"web.host={args.web_host}"] if args.web_host else [])]
        settings = load_settings(args.config, overrides, state_dir=args.state_dir)
        # unset: trainers must not inherit NOTIFY_SOCKET and speak for the daemon
        return Daemon(settings, notifier=Notifier.from_env(unset_environment=True)).serve()
    if args.command == "install-systemd":
        return _install_systemd(args)
    if args.command == "validate":
        return _validate(args)
    if args.command in ("inspect", "tune"):
        return _inspect(args)
    if args.command == "examples":
        return _examples()
    if args.command == "init":
        return _init(args)
    return _run(args)


def _examples() -> int:
    from supervisor.cli.project import list_examples

    examples = list_examples()
    for example in examples:
        print(f"{example.kind:5}  {example.name:12}  {example.path}")
        if example.description:
            print(f"       {example.description}")
    if examples:
        job = next((e for e in examples if e.kind == "job"), examples[0])
        print(f"\nrun one:   {PROG} run {job.path}")
        print(f"copy one:  cp {job.path} .")
    return 0


def _init(args: argparse.Namespace) -> int:
    from supervisor.cli.project import init_project

    config, model = init_project(args.directory, force=args.force)
    print(f"wrote {config}")
    print(f"wrote {model}")
    print("next:")
    print(f"  {PROG} validate {config}")
    print(f"  {PROG} run {config}        (trains on a CPU in about a minute)")
    print(f"  then edit {model.name} and {config.name} into your own job")
    return 0


def _install_systemd(args: argparse.Namespace) -> int:
    try:
        path, commands = install_unit(user=args.user, state_dir=args.state_dir)
    except OSError as exc:
        hint = "run it with sudo, or use --user" if not args.user else "check the directory's permissions"
        print(f"{PROG}: error: cannot write the unit: {exc.strerror or exc} ({hint})", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    print("enable and start it with:")
    for command in commands:
        print(f"  {command}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    import subprocess

    from supervisor.core.submit import load_request_config

    req = submit_request(args.config, args.overrides, None)
    cfg = load_request_config(req)
    settings = load_settings(state_dir=args.state_dir)
    proc = subprocess.run([cfg.python or sys.executable, "-m", settings.trainer_module, "--config", args.config,
                           "--check", *args.overrides], stdin=subprocess.DEVNULL)
    if proc.returncode == 0:
        print(f"{args.config}: ok")
    return proc.returncode


def _inspect(args: argparse.Namespace) -> int:
    """``inspect``/``tune``: validate the config here (one-line errors), then run it under the job's python."""
    import subprocess

    from supervisor.core.submit import load_request_config

    overrides = [a for a in args.args if "=" in a and not a.startswith("-")]
    cfg = load_request_config(submit_request(args.config, overrides, None))
    settings = load_settings(state_dir=args.state_dir)
    proc = subprocess.run([cfg.python or sys.executable, "-m", settings.trainer_module, args.command, args.what,
                           args.config, *args.args], stdin=subprocess.DEVNULL)
    return proc.returncode


def _run(args: argparse.Namespace) -> int:
    console = make_console()
    req = submit_request(args.config, args.overrides, args.name)
    state_dir = state_dir_of(args)
    client = Client(state_dir)
    daemon: Daemon | None = None
    if client.available():
        console.print(f"[dim]submitting to the daemon serving {state_dir}[/]")
    else:
        # the events printed below say what happened; the daemon's own log only when asked for
        setup_logging(logging.INFO if args.verbose else logging.ERROR)
        # the foreground run serves the socket for supervisorctl; the web page is the daemon's
        daemon = Daemon(load_settings(args.daemon_config, ["web.enabled=false"], state_dir=str(state_dir)))
        daemon.start()
    try:
        job = client.call("submit", config_path=req.config_path, cwd=req.cwd, config_text=req.config_text,
                          overrides=req.overrides, name=req.name)
        console.print(f"job [bold]{job['id']}[/] submitted; state dir {state_dir}")
        final = _follow(client, console, job["id"])
    finally:
        if daemon is not None:
            daemon.stop()
    job_detail(console, final)
    return EXIT_STATUS.get(final["state"], 1)


def _follow(client: Client, console: Console, job_id: str) -> dict[str, Any]:
    """Print events and progress until the job ends. Ctrl-C stops the job gracefully; twice, at once."""
    interrupts = 0

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts >= 2:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    asked_stop = False
    after = 0
    last_progress = ("", 0.0)
    try:
        while True:
            for event in client.call("events", after=after, job=job_id):
                after = event["id"]
                if event["kind"] != "checkpoint":
                    console.print(event_line(event))
            job = client.call("status", job=job_id)
            if job["state"] in TERMINAL_STATES:
                return job
            if interrupts and not asked_stop:
                console.print("[yellow]stopping the job (Ctrl-C again to stop waiting)[/]")
                client.call("stop", job=job_id)
                asked_stop = True
            line = _progress_line(job)
            if line != last_progress[0] and time.monotonic() - last_progress[1] >= 5.0:
                console.print(line)
                last_progress = (line, time.monotonic())
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("[red]not waiting any more; the job keeps its state[/]")
        try:
            return client.call("status", job=job_id)
        except SupervisorError:
            raise
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress_line(job: dict[str, Any]) -> str:
    state = job["state"]
    metrics = "  ".join(f"{k}={v:.4g}" for k, v in sorted((job.get("metrics") or {}).items()))
    budget = job["budget"]
    left = "" if budget["remaining"] is None else f"  budget left {format_duration(budget['remaining'])}"
    epoch = job.get("epoch")
    return (f"[{STATE_STYLE.get(state, '')}]{state}[/] attempt {len(job['attempts'])}  step {job['global_step']}"
            f"  epoch {'-' if epoch is None else epoch}  {metrics}{left}")


if __name__ == "__main__":
    sys.exit(main())
