"""The pure parts of shared-server mode: who is an admin, who sees what, whom a job runs as, the settings."""

from __future__ import annotations

import grp
import os
import pwd
import socket

import pytest

from supervisor.access import Caller, RunAs, caller_from_groups, peer_credentials, run_as_for, user_groups
from supervisor.errors import ConfigError
from supervisor.settings import AccessConfig, check_access, load_settings

DAEMON = 1000


@pytest.mark.parametrize(("uid", "groups", "admin_gid", "admin"), [
    (0, [0], None, True),  # root always
    (DAEMON, [DAEMON], None, True),  # the daemon's own user (the web page, sweep workers)
    (2001, [2001, 500], 500, True),  # a member of access.admin_group
    (2001, [2001, 501], 500, False),  # a member of other groups only
    (2001, [2001], None, False),  # no admin group configured
])
def test_an_admin_is_root_the_daemons_user_or_a_member_of_the_admin_group(
        uid: int, groups: list[int], admin_gid: int | None, admin: bool) -> None:
    assert caller_from_groups(uid, groups, admin_gid=admin_gid, daemon_uid=DAEMON) == Caller(uid, admin)


def test_a_caller_sees_their_own_jobs_and_an_admin_every_job() -> None:
    assert Caller(2001, admin=False).may_see(2001)
    assert not Caller(2001, admin=False).may_see(2002)
    assert not Caller(2001, admin=False).may_see(0)
    assert Caller(2001, admin=True).may_see(2002)


def test_peer_credentials_are_the_kernels_view_of_the_other_end() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert peer_credentials(left) == (os.getpid(), os.getuid(), os.getgid())


def test_a_users_groups_include_the_primary_one() -> None:
    me = pwd.getpwuid(os.getuid())
    assert me.pw_gid in user_groups(me.pw_uid, me.pw_gid)
    assert user_groups(4_000_000, 77) == [77]  # no passwd entry: only the gid the kernel gave


def test_the_daemons_own_jobs_run_as_the_daemon_and_a_removed_users_jobs_not_at_all() -> None:
    assert run_as_for(os.getuid()) is None
    with pytest.raises(LookupError, match="uid 4000000 has no user on this machine"):
        run_as_for(4_000_000)
    root = pwd.getpwuid(0)
    as_root = run_as_for(0, daemon_uid=DAEMON)  # seen from a daemon that is not root
    assert as_root is not None
    assert (as_root.uid, as_root.gid, as_root.name, as_root.home) == (0, root.pw_gid, root.pw_name, root.pw_dir)
    assert root.pw_gid in as_root.groups


def test_run_as_sets_the_users_home_and_names_and_keeps_the_rest() -> None:
    user = RunAs(uid=2001, gid=2001, groups=(2001, 44), name="alice", home="/home/alice")
    env = user.environment({"HOME": "/root", "USER": "root", "LOGNAME": "root", "PATH": "/usr/bin", "X": "1"})
    assert env == {"HOME": "/home/alice", "USER": "alice", "LOGNAME": "alice", "PATH": "/usr/bin", "X": "1"}


def _a_group() -> str:
    return grp.getgrgid(os.getgid()).gr_name


def test_access_settings_accept_existing_groups_for_a_root_daemon() -> None:
    check_access("d.yaml", AccessConfig(group=_a_group(), admin_group=_a_group()), euid=0)
    check_access("d.yaml", AccessConfig(), euid=1000)  # the default: an owner-only socket, as before


@pytest.mark.parametrize(("access", "euid", "message"), [
    (AccessConfig(group="no-such-group-mlsv"), 0,
     "d.yaml: access.group: no group named 'no-such-group-mlsv' on this machine"),
    (AccessConfig(group="root", admin_group="no-such-group-mlsv"), 0,
     "d.yaml: access.admin_group: no group named 'no-such-group-mlsv' on this machine"),
    (AccessConfig(group=" "), 0, "d.yaml: access.group: expected a group name or null, got an empty name"),
    (AccessConfig(admin_group="root"), 0,
     "d.yaml: access.admin_group: needs access.group (without it only the daemon's user can connect)"),
    (AccessConfig(group="root"), 1000,
     "d.yaml: access.group: a shared socket needs the daemon to run as root (it runs each job as its user); "
     "leave it null for a per-user daemon"),
])
def test_bad_access_settings_are_one_line_naming_the_key(access: AccessConfig, euid: int, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_access("d.yaml", access, euid=euid)
    assert str(error.value) == message


def test_access_settings_load_from_the_command_line(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ConfigError, match=r"access\.group: no group named 'nope-mlsv'"):
        load_settings(overrides=["access.group=nope-mlsv"], state_dir=str(tmp_path))
    settings = load_settings(overrides=[], state_dir=str(tmp_path))
    assert (settings.access.group, settings.access.admin_group) == (None, None)
