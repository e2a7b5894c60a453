"""The standby's copy, in memory, of the checkpoint the next attempt will most likely resume from.

While it waits, a standby keeps the checkpoint ``supervisor.rules.resume.choose_resume``
would pick now loaded on the CPU, as Lightning would load it (re-read when the
manifest changes; not when bigger than the limit). At the handover
``CachedCheckpointIO`` serves Lightning's ``load_checkpoint`` from that copy when
the daemon chose the same, unchanged file (inode, size, mtime); any other load
reads the disk. The copy is handed over once, then forgotten: the fit owns it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from supervisor.jobfiles.layout import manifest_path
from supervisor.jobfiles.manifest import live_checkpoints
from supervisor.rules.resume import choose_resume

LIMIT_ENV = "ML_SUPERVISOR_STANDBY_CACHE_MB"  # the most a standby may hold in memory; 0 turns the cache off
DEFAULT_LIMIT_MB = 2048
MIN_REFRESH_S = 1.0  # a manifest that changes every step is re-read at most this often


@dataclass(frozen=True)
class FileIdentity:
    """A file as it is on disk now: a rewrite or a rename over it changes at least one field."""

    path: str  # the real path
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> FileIdentity | None:
        """``path``'s identity, or None when it cannot be read."""
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            return None
        return cls(path=real, inode=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns)


def limit_from_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> int:
    """The cache's limit in bytes (``ML_SUPERVISOR_STANDBY_CACHE_MB``, default 2048 MB)."""
    try:
        return max(0, int(float(environ.get(LIMIT_ENV, DEFAULT_LIMIT_MB)) * 2**20))
    except ValueError:
        return DEFAULT_LIMIT_MB * 2**20


class CheckpointCache:
    """The predicted resume checkpoint of one job, loaded on the CPU (module docstring)."""

    def __init__(self, checkpoint_dir: Path, resume_from: str, limit_bytes: int) -> None:
        self.manifest = manifest_path(checkpoint_dir)
        self.resume_from = resume_from
        self.limit_bytes = limit_bytes
        self._manifest_seen: tuple[int, int] | None = None
        self._next_refresh = 0.0
        self._identity: FileIdentity | None = None
        self._data: dict[str, Any] | None = None
        self.served: str | None = None  # the path the fit was given from memory, if any

    @property
    def holds(self) -> str | None:
        """The real path of the checkpoint held, or None."""
        return self._identity.path if self._data is not None and self._identity is not None else None

    def refresh(self) -> None:
        """Load the checkpoint the daemon would choose now, when the manifest changed (at most once a second)."""
        now = time.monotonic()
        if now < self._next_refresh or self.limit_bytes <= 0:
            return
        self._next_refresh = now + MIN_REFRESH_S
        try:
            st = os.stat(self.manifest)
        except OSError:
            return  # no checkpoint yet
        seen = (st.st_mtime_ns, st.st_size)
        if seen == self._manifest_seen:
            return
        self._manifest_seen = seen
        choice = choose_resume(live_checkpoints(self.manifest), self.resume_from, verify=lambda entry: None)
        identity = FileIdentity.of(choice.path) if choice.path is not None else None
        if identity is None or identity.size > self.limit_bytes:
            self._forget()
            return
        if identity == self._identity and self._data is not None:
            return
        self._forget()  # never two copies in memory at once
        try:
            data = TorchCheckpointIO().load_checkpoint(identity.path)
        except Exception as exc:  # being replaced as we read it, or not a checkpoint: the restart reads the disk
            _log(f"standby: not keeping {identity.path} in memory: {type(exc).__name__}: {exc}")
            return
        if FileIdentity.of(identity.path) == identity:  # unchanged while we read it
            self._identity, self._data = identity, data

    def take(self, path: str) -> dict[str, Any] | None:
        """The held checkpoint if it is ``path``, unchanged on disk; handed over once, then forgotten."""
        if self._data is None or self._identity is None or FileIdentity.of(path) != self._identity:
            return None
        data = self._data
        self._forget()
        self.served = os.path.realpath(path)
        return data

    def _forget(self) -> None:
        self._identity, self._data = None, None


_DEFAULT_MAP_LOCATION: Any = object()


class CachedCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose load of the standby's held checkpoint is served from memory."""

    def __init__(self, cache: CheckpointCache) -> None:
        super().__init__()
        self.cache = cache

    def load_checkpoint(self, path: Any, map_location: Any = _DEFAULT_MAP_LOCATION,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """The held checkpoint when ``path`` is it and the load is Lightning's own (CPU, default options)."""
        if map_location is _DEFAULT_MAP_LOCATION:
            if weights_only is None:
                held = self.cache.take(str(path))
                if held is not None:
                    _log(f"resuming from {path}, kept in memory by the standby")
                    return held
            return super().load_checkpoint(path, weights_only=weights_only)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def _log(message: str) -> None:
    print(f"[trainer] {message}", file=sys.stderr, flush=True)
