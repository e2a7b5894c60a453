"""The web token and the web address, kept owner-only in the state dir.

``<state>/web-token`` holds the secret every API request must carry
(``Authorization: Bearer <token>`` or ``X-Auth-Token: <token>``). It is made
once and kept across daemon restarts, so an open page and a Prometheus scrape
config keep working; delete the file to rotate it.

``<state>/web.json`` records where the running daemon listens, so
``supervisorctl web-url`` can print the address with the token again.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
from pathlib import Path
from typing import Any

from supervisor.errors import DaemonUnavailable, SupervisorError

TOKEN_FILE = "web-token"
ENDPOINT_FILE = "web.json"
TOKEN_BYTES = 32
_MIN_TOKEN_LENGTH = 32


def token_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / TOKEN_FILE


def endpoint_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / ENDPOINT_FILE


def load_or_create_token(state_dir: str | Path) -> str:
    """The daemon's web token: read from ``<state>/web-token``, or made there (mode 0600) the first time.

    A file others can read is made owner-only again (anyone who reads it can
    start jobs); a file that is empty or too short to be a secret is replaced.
    """
    path = token_path(state_dir)
    existing = _read_token_file(path)
    if existing is not None:
        return existing
    token = secrets.token_urlsafe(TOKEN_BYTES)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    # O_EXCL + mode 0600 at creation: the secret is never readable by others, not even for an instant.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link, not rename: if another process made the token meanwhile, keep theirs (all callers agree)
        os.link(tmp, path)
    except FileExistsError:
        existing = _read_token_file(path)
        if existing is not None:
            return existing
        os.replace(tmp, path)  # an unusable file (empty, too short): ours replaces it
    finally:
        tmp.unlink(missing_ok=True)
    return token


def read_token(state_dir: str | Path) -> str | None:
    """The token if the file exists and is usable, else None (for ``supervisorctl web-url``)."""
    return _read_token_file(token_path(state_dir))


def _read_token_file(path: Path) -> str | None:
    try:
        info = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if len(text) < _MIN_TOKEN_LENGTH or not text.isprintable():
        return None
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o600)
    return text


def browser_host(host: str) -> str:
    """The host name to put in a URL for ``host`` as bound: a wildcard address is not reachable, a name is."""
    if host in ("", "0.0.0.0", "::"):
        return socket.getfqdn() or socket.gethostname()
    return f"[{host}]" if ":" in host else host


def page_url(host: str, port: int, token: str | None = None) -> str:
    """The page's address; with ``token`` in the fragment, which browsers never send to the server."""
    url = f"http://{browser_host(host)}:{port}/"
    return f"{url}#token={token}" if token else url


def write_endpoint(state_dir: str | Path, host: str, port: int) -> None:
    """Record where the web server listens (owner-only, replaced atomically)."""
    path = endpoint_path(state_dir)
    data = {"host": host, "port": port, "url": page_url(host, port), "pid": os.getpid()}
    tmp = path.with_name(f".{ENDPOINT_FILE}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, json.dumps(data).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_endpoint(state_dir: str | Path) -> None:
    """Forget the address (the daemon stops serving the page)."""
    endpoint_path(state_dir).unlink(missing_ok=True)


def read_web_url(state_dir: str | Path) -> str:
    """The page's URL with the token, for ``supervisorctl web-url``.

    Raises ``DaemonUnavailable`` when no daemon serves the page from this state
    dir (not running, or started with the web page disabled).
    """
    try:
        data: Any = json.loads(endpoint_path(state_dir).read_text(encoding="utf-8"))
        host, port = str(data["host"]), int(data["port"])
    except FileNotFoundError:
        raise DaemonUnavailable(f"no web page is served from {state_dir}: the daemon is not running, "
                                "or runs with web.enabled=false") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SupervisorError(f"{endpoint_path(state_dir)}: unreadable ({exc})") from None
    pid = data.get("pid")
    if isinstance(pid, int) and not _pid_alive(pid):
        raise DaemonUnavailable(f"the daemon that served the web page from {state_dir} (pid {pid}) is gone")
    token = read_token(state_dir)
    if token is None:
        raise SupervisorError(f"{token_path(state_dir)}: missing or unreadable")
    return page_url(host, port, token)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
