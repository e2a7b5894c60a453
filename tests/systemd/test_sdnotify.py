"""Notifier against real AF_UNIX datagram sockets (path and abstract), the watchdog rules, log format."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from supervisor.sdnotify import SYSTEMD_NOTIFY_ENV, Notifier, stderr_is_journal
from tests.support.notify_listener import NotifyListener, parse_notify_message


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notifier_speaks_to_a_real_notify_socket(abstract: bool) -> None:
    with NotifyListener(abstract=abstract) as listener:
        assert listener.address.startswith("@") is abstract
        notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.address})
        assert notifier.enabled
        assert notifier.ready()
        assert notifier.status("2 running,\n1 queued")
        assert notifier.watchdog()
        assert notifier.extend_timeout(90)
        assert notifier.stopping()
        got = [listener.receive(5) for _ in range(5)]
        notifier.close()
    assert got == [
        {"READY": "1"},
        {"STATUS": "2 running, 1 queued"},  # one line: systemctl status shows one
        {"WATCHDOG": "1"},
        {"EXTEND_TIMEOUT_USEC": "90000000"},
        {"STOPPING": "1"},
    ]


def test_listener_binds_a_given_path(tmp_path: Path) -> None:
    short = Path(f"/tmp/sdn-test-{os.getpid()}-{time.monotonic_ns()}")
    with NotifyListener(short) as listener:
        assert listener.address == str(short)
        Notifier(str(short)).notify("READY=1", "STATUS=up")
        assert listener.receive(5) == {"READY": "1", "STATUS": "up"}
    assert not short.exists()


def test_a_child_process_notifies_through_the_environment() -> None:
    # What a daemon started by systemd sees: NOTIFY_SOCKET in its environment.
    code = (
        "from supervisor.sdnotify import Notifier\n"
        "n = Notifier.from_env(unset_environment=True)\n"
        "import os\n"
        "n.ready(); n.status('serving ' + str('NOTIFY_SOCKET' in os.environ))\n"
    )
    with NotifyListener(abstract=True) as listener:
        env = {**os.environ, "NOTIFY_SOCKET": listener.address}
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
        assert listener.wait_for("READY", "1", timeout_s=5) == {"READY": "1"}
        assert listener.wait_for("STATUS", timeout_s=5) == {"STATUS": "serving False"}  # unset for its children


def test_without_notify_socket_everything_is_a_silent_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert (notifier.ready(), notifier.status("x"), notifier.watchdog(), notifier.stopping()) == (False,) * 4
    assert notifier.watchdog_interval() is None
    assert notifier.watchdog_tick() is False


def test_a_vanished_socket_never_raises(tmp_path: Path) -> None:
    with NotifyListener() as listener:
        address = listener.address
    notifier = Notifier(address)
    assert notifier.ready() is False  # the socket is gone: logged once, never raised
    assert Notifier("vsock:2:1234").enabled is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "<self>"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid(env: dict[str, str], expected: float | None) -> None:
    env = {k: (str(os.getpid()) if v == "<self>" else v) for k, v in env.items()}
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "@unused", **env})
    assert notifier.watchdog_interval() == expected


def test_watchdog_tick_pings_at_most_once_per_interval() -> None:
    with NotifyListener(abstract=True) as listener:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "2000000"})
        assert notifier.watchdog_interval() == 1.0
        sent = [notifier.watchdog_tick(now) for now in (100.0, 100.2, 100.9, 101.0, 101.5, 102.1)]
        assert sent == [True, False, False, True, False, True]
        assert listener.drain(0.2) == [{"WATCHDOG": "1"}] * 3


def test_pings_stop_while_the_main_loop_hangs_and_resume_after() -> None:
    # The pattern the daemon follows: watchdog_tick() inside the loop, never from a timer thread.
    with NotifyListener(abstract=True) as listener:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "200000"})  # ping 0.1s
        loop_body = threading.Lock()  # held by the test = the loop body hangs
        stop = threading.Event()

        def main_loop() -> None:
            while not stop.is_set():
                with loop_body:
                    notifier.watchdog_tick()
                time.sleep(0.01)

        loop = threading.Thread(target=main_loop, daemon=True)
        loop.start()
        try:
            healthy = listener.drain(0.6)
            with loop_body:
                listener.drain(0.02)  # a ping sent just before the hang
                hung = listener.drain(0.6)
            recovered = listener.drain(0.6)
        finally:
            stop.set()
            loop.join(5)
    assert len(healthy) >= 3 and all(m == {"WATCHDOG": "1"} for m in healthy)
    assert hung == []
    assert len(recovered) >= 3


def test_wait_for_times_out_with_what_it_got() -> None:
    with NotifyListener(abstract=True) as listener:
        Notifier(listener.address).status("starting")
        with pytest.raises(TimeoutError, match=r"no READY=1 within 0\.3s"):
            listener.wait_for("READY", "1", timeout_s=0.3)
        assert listener.messages == [{"STATUS": "starting"}]


def test_parse_notify_message() -> None:
    assert parse_notify_message(b"READY=1\nSTATUS=a=b\n\njunk") == {"READY": "1", "STATUS": "a=b"}
    assert set(SYSTEMD_NOTIFY_ENV) == {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}


def test_stderr_is_journal_compares_device_and_inode(tmp_path: Path) -> None:
    target = tmp_path / "stream"
    with open(target, "w") as f:
        st = os.fstat(f.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fd=f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, fd=f.fileno())
        assert not stderr_is_journal({}, fd=f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, fd=f.fileno())
