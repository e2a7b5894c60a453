"""Who is calling, what they may see, and whom their jobs run as (shared-server mode).

The daemon's socket tells it each caller's uid through the kernel
(``SO_PEERCRED``): nothing about identity comes from a request. A caller is an
admin when they are root, the daemon's own user, or a member of
``access.admin_group``; an admin sees and controls every job, anyone else only
the jobs they submitted (another user's job is "not found": ids are not to be
probed). A job whose owner is not the daemon's user runs as that owner
(``RunAs``): uid, gid, supplementary groups, home and login name.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """The identity an API operation runs for: a uid, and whether it may see every job."""

    uid: int
    admin: bool

    def may_see(self, owner_uid: int) -> bool:
        """Whether a job owned by ``owner_uid`` exists for this caller."""
        return self.admin or owner_uid == self.uid


def daemon_caller() -> Caller:
    """The daemon itself, and clients that share its identity (the web page, sweep workers): an admin."""
    return Caller(uid=os.getuid(), admin=True)


def caller_from_groups(uid: int, group_ids: Iterable[int], *, admin_gid: int | None,
                       daemon_uid: int) -> Caller:
    """A caller from its uid and every group it is in (pure): admin when root, the daemon's user, or in the
    admin group."""
    admin = uid in (0, daemon_uid) or (admin_gid is not None and admin_gid in set(group_ids))
    return Caller(uid=uid, admin=admin)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a Unix socket, as the kernel recorded it at connect."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def user_groups(uid: int, gid: int) -> list[int]:
    """Every group ``uid`` is in (its primary ``gid`` included); just ``[gid]`` for a uid with no passwd entry."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return [gid]
    return os.getgrouplist(name, gid)


def resolve_caller(uid: int, gid: int, *, admin_group: str | None) -> Caller:
    """The ``Caller`` for a connection's peer credentials, with its groups read from the system."""
    admin_gid = group_id(admin_group) if admin_group else None
    return caller_from_groups(uid, user_groups(uid, gid), admin_gid=admin_gid, daemon_uid=os.getuid())


def group_id(name: str) -> int | None:
    """The gid of group ``name``, ``None`` when there is no such group."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


@dataclass(frozen=True)
class RunAs:
    """A user a job's processes run as: what ``Popen(user=, group=, extra_groups=)`` and the environment need."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with this user's ``HOME``, ``USER`` and ``LOGNAME`` (never root's, which the daemon has)."""
        env = dict(base)
        env.update(HOME=self.home, USER=self.name, LOGNAME=self.name)
        return env


def run_as_for(owner_uid: int, *, daemon_uid: int | None = None) -> RunAs | None:
    """Whom a job owned by ``owner_uid`` runs as: ``None`` when that is the daemon's own user (nothing changes).

    Raises ``LookupError`` when the uid has no passwd entry (a removed user's job cannot run).
    """
    if owner_uid == (os.getuid() if daemon_uid is None else daemon_uid):
        return None
    try:
        entry = pwd.getpwuid(owner_uid)
    except KeyError:
        raise LookupError(f"uid {owner_uid} has no user on this machine") from None
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return RunAs(uid=owner_uid, gid=entry.pw_gid, groups=groups, name=entry.pw_name, home=entry.pw_dir)
