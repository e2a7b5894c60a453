"""The zygote's parts: command-line and environment rewriting, its arguments, its fork-safety check.

The rewriting and the thread check run in real child processes (this test process has
pytest-xdist's threads, and rewriting its own command line would confuse the test run).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import psutil

from supervisor.jobfiles.standbyfiles import ROOM_ARG, ROOM_ENV
from supervisor.runners.zygote import job_arguments
from supervisor.runners.zygotes import MAX_ZYGOTE_STARTS, replace_after_failure
from tests.support.harness import REPO
from trainer.proctitle import ARG_END, ARG_START, encode_entries, memory_region


def test_entries_are_nul_terminated_and_padded_to_the_room_or_refused() -> None:
    assert encode_entries(["python", "-m", "x"], 16) == b"python\0-m\0x\0\0\0\0\0"
    assert encode_entries(["abc"], 4) == b"abc\0"
    assert encode_entries(["abcd"], 4) is None  # no room for its NUL: nothing is written


def test_the_argv_region_is_read_after_a_command_name_with_parentheses_and_spaces() -> None:
    fields = " ".join(str(n) for n in range(3, 53))  # field n holds the number n
    assert memory_region(ARG_START, ARG_END, f"1234 (a) (b c) {fields}") == (48, 49)


def test_a_process_shows_the_command_line_and_environment_it_writes() -> None:
    script = textwrap.dedent("""
        import os, sys, time
        from trainer.proctitle import set_command_line, set_environment_block
        os.environ.clear()
        os.environ.update({"RANK": "1", "PATH_WITH_SPACES": "/a b/c"})
        ok = set_command_line(["python", "-m", "trainer", "--attempt-dir", "/x y/attempts/2", "--standby"])
        ok = ok and set_environment_block(os.environ)
        too_long = set_command_line(["x" * 100000])
        print(ok, too_long, flush=True)
        time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, ROOM_ARG], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={"PYTHONPATH": str(REPO), ROOM_ENV[0]: ROOM_ENV[1]})
    try:
        assert proc.stdout is not None and proc.stdout.readline().split() == ["True", "False"]
        shown = psutil.Process(proc.pid)
        cmdline = shown.cmdline()
        assert cmdline[:6] == ["python", "-m", "trainer", "--attempt-dir", "/x y/attempts/2", "--standby"]
        assert set(cmdline[6:]) <= {""}  # the unused room
        assert shown.environ() == {"RANK": "1", "PATH_WITH_SPACES": "/a b/c"}
    finally:
        proc.kill()
        proc.wait()


def test_a_zygote_is_given_the_jobs_arguments_and_none_of_an_attempts() -> None:
    args = ["--config", "/j/config.yaml", "--attempt-dir", "/j/attempts/2", "--checkpoint-dir=/j/ck", "--attempt",
            "2", "--restarts", "1", "--deadline", "17.5", "--ckpt", "/j/ck/last.ckpt", "trainer.max_epochs=3"]
    assert job_arguments(args) == ["--config", "/j/config.yaml", "trainer.max_epochs=3"]


def _fork_unsafe_in_child(prelude: str) -> str:
    script = prelude + "\nfrom trainer.zygote import fork_unsafe\nprint(fork_unsafe())\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_openblas_threads_are_accounted_for_and_any_other_thread_refuses_the_fork() -> None:
    assert _fork_unsafe_in_child("import numpy, scipy.linalg") == "None"  # two OpenBLAS pools, started at load
    refused = _fork_unsafe_in_child("import numpy, threading, time\n"
                                    "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()")
    assert "a fork would copy only the calling thread" in refused


def test_a_zygote_that_said_why_is_given_up_on_and_a_killed_one_replaced_a_bounded_number_of_times() -> None:
    assert not replace_after_failure(said_why=True, starts=1)  # it would refuse again
    assert [replace_after_failure(said_why=False, starts=n) for n in range(1, MAX_ZYGOTE_STARTS + 2)] == \
        [True] * (MAX_ZYGOTE_STARTS - 1) + [False, False]
