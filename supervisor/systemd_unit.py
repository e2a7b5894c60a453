"""The systemd unit of the daemon: render it for this interpreter, install it, say how to enable it.

``render_unit`` is the single source of the unit text; the files shipped in
``systemd/`` are its output for ``/usr/bin/python3`` (a test keeps them equal).
The choices that matter:

- ``Type=notify`` + ``WatchdogSec=``: systemd waits for ``READY=1`` and restarts a
  daemon whose main loop stops sending ``WATCHDOG=1`` (``Restart=on-failure``
  covers the watchdog). ``PYTHONFAULTHANDLER=1`` makes the watchdog's SIGABRT
  print every thread's stack to the journal: the hang explains itself.
- ``KillMode=process``: stopping or restarting the daemon signals the daemon
  only. Trainers (and their attempt monitors) keep running; the next daemon
  adopts them. ``OOMPolicy=continue``: a trainer killed by the kernel's OOM
  killer is one job's crash for the daemon to handle, not a reason for systemd
  to stop the whole unit.
- ``StateDirectory=ml-supervisor``: systemd creates ``/var/lib/ml-supervisor``
  (user unit: ``~/.local/state/ml-supervisor``) and passes it as
  ``$STATE_DIRECTORY``; ``serve`` uses it when no ``--state-dir`` is given.
- ``After=nvidia-persistenced.service`` without ``Wants=``: ordered after it when
  the node has it, no error when it does not. ``WantedBy=multi-user.target``: a
  rebooted node starts the daemon, which relaunches the interrupted jobs.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

UNIT_NAME = "ml-supervisor.service"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
# The interpreter the shipped unit files name; `install-systemd` writes the real one.
SHIPPED_PYTHON = "/usr/bin/python3"
WATCHDOG_SEC = 60


def render_unit(*, user: bool, python: str = sys.executable, state_dir: str | None = None) -> str:
    """The unit file text for running ``python -m supervisor.cli.main serve`` under systemd.

    ``user`` renders the per-user variant (``systemctl --user``, no root needed).
    ``python`` must be an absolute path; a virtualenv's ``bin/python`` is kept as
    given (resolving its symlink would lose the venv). ``state_dir`` adds
    ``--state-dir`` to ``ExecStart``; without it the daemon uses ``$STATE_DIRECTORY``.
    Raises ``ValueError`` for a relative interpreter path.
    """
    if not os.path.isabs(python):
        raise ValueError(f"the interpreter must be an absolute path, got {python!r}")
    command = [python, "-m", "supervisor.cli.main", "serve"]
    if state_dir is not None:
        if not os.path.isabs(state_dir):
            raise ValueError(f"the state dir must be an absolute path, got {state_dir!r}")
        command += ["--state-dir", state_dir]
    exec_start = " ".join(_quote(arg) for arg in command)

    unit = [
        "# Written by `ml-supervisor install-systemd` (supervisor/systemd_unit.py).",
        "# ExecStart must name the interpreter that has ml-supervisor installed (e.g. a venv's bin/python).",
        "[Unit]",
        "Description=ml-supervisor: fault-tolerant supervisor for PyTorch Lightning training",
    ]
    if user:
        # A user manager cannot order itself after system units (nvidia-persistenced, the network).
        unit += ["# Per-user variant: run `loginctl enable-linger` so it starts at boot, without a login."]
    else:
        unit += [
            "Wants=network-online.target",
            "# Ordered after nvidia-persistenced when the node has it; no error when it does not.",
            "After=network-online.target nvidia-persistenced.service",
        ]
    unit += [
        "# Give up after 10 crashes in 10 minutes rather than crash-looping forever.",
        "StartLimitIntervalSec=600",
        "StartLimitBurst=10",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start}",
        "Environment=PYTHONUNBUFFERED=1",
        "# On a watchdog timeout systemd sends SIGABRT: print every thread's stack to the journal first.",
        "Environment=PYTHONFAULTHANDLER=1",
        "# The main loop pings at half this interval; a hung loop gets the daemon restarted.",
        f"WatchdogSec={WATCHDOG_SEC}",
        "Restart=on-failure",
        "RestartSec=5",
        "# Recovering many jobs may take a while; the daemon can ask for more with EXTEND_TIMEOUT_USEC.",
        "TimeoutStartSec=300",
        "TimeoutStopSec=30",
        "# Stop/restart signals the daemon only: training keeps running and the next daemon adopts it.",
        "KillMode=process",
        "# A trainer killed by the OOM killer is a job crash for the daemon, not a unit failure.",
        "OOMPolicy=continue",
        "StateDirectory=ml-supervisor",
        "StateDirectoryMode=0750",
        *([] if user else SYSTEM_HARDENING),
        "",
        "[Install]",
        "WantedBy=default.target" if user else "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(unit)


# The system unit's sandbox (see docs/shared-server.md for `systemd-analyze security` before and after).
# Trainers inherit it: nothing here may take what training needs — the GPU device nodes (no
# PrivateDevices/DevicePolicy), writable workdirs under /home and /srv (no ProtectHome, ProtectSystem=full
# not strict), JIT pages (no MemoryDenyWriteExecute), pinned memory (CAP_IPC_LOCK).
SYSTEM_HARDENING = [
    "# Hardening: setuid binaries (sudo) gain nothing, in the daemon or in any trainer.",
    "NoNewPrivileges=yes",
    "# /usr, /boot, /etc read-only; the state dir (and /var, /home, /srv for workdirs) stays writable.",
    "ProtectSystem=full",
    "PrivateTmp=yes",
    "# DataLoader workers sharing tensors through file descriptors need many.",
    "LimitNOFILE=1048576",
    "ProtectKernelTunables=yes",
    "# The NVIDIA modules are loaded at boot (udev, nvidia-persistenced), never by a trainer.",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "PrivateMounts=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    "# Never needed by training (ptrace stays: py-spy dumps a hung trainer's stacks).",
    "SystemCallFilter=~@clock @cpu-emulation @module @mount @obsolete @raw-io @reboot @swap",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "# What root keeps: signal and inspect trainers of any user (py-spy, /proc/<pid>/environ), become the",
    "# submitting user, hand them their job dirs, pin memory for CUDA/NCCL, raise limits for workers.",
    "CapabilityBoundingSet=CAP_KILL CAP_SETUID CAP_SETGID CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE "
    "CAP_DAC_READ_SEARCH CAP_SYS_PTRACE CAP_IPC_LOCK CAP_SYS_RESOURCE",
]


def default_unit_dir(*, user: bool) -> Path:
    """Where ``install_unit`` writes: ``/etc/systemd/system`` or ``$XDG_CONFIG_HOME/systemd/user``."""
    if not user:
        return SYSTEM_UNIT_DIR
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "systemd" / "user"


def install_unit(
    *, user: bool, dest_dir: Path | None = None, python: str = sys.executable, state_dir: str | None = None
) -> tuple[Path, list[str]]:
    """Write the unit for this interpreter; return its path and the commands that enable and start it.

    ``dest_dir`` defaults to ``default_unit_dir(user=user)``. Raises ``OSError``
    when the directory is not writable (e.g. ``/etc`` without root: use ``--user``).
    """
    directory = Path(dest_dir) if dest_dir is not None else default_unit_dir(user=user)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / UNIT_NAME
    tmp = path.with_name(f".{UNIT_NAME}.{os.getpid()}.tmp")
    tmp.write_text(render_unit(user=user, python=python, state_dir=state_dir))
    os.replace(tmp, path)  # systemd never reads half a unit
    if user:
        commands = [
            "systemctl --user daemon-reload",
            f"systemctl --user enable --now {UNIT_NAME}",
            f"loginctl enable-linger {_login_name()}",
            f"journalctl --user -u {UNIT_NAME} -f",
        ]
    else:
        commands = [
            "systemctl daemon-reload",
            f"systemctl enable --now {UNIT_NAME}",
            f"journalctl -u {UNIT_NAME} -f",
        ]
    return path, commands


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "$USER"


def _quote(arg: str) -> str:
    """``arg`` as one word of an ``ExecStart=`` line.

    systemd expands ``%`` specifiers and ``$VAR`` in command lines: both are
    doubled. Words with spaces, quotes or backslashes go in double quotes with
    C-style escapes.
    """
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if escaped and not any(c in escaped for c in " \t\"'\\;"):
        return escaped
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
