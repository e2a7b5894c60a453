"""The exit watcher wakes the loop once when a watched pipe has something to read (a zygote's ``ready``), and
leaves the caller's descriptor open for it to read."""

from __future__ import annotations

import os
import threading

from supervisor.processes.watcher import ExitWatcher


def test_a_readable_pipe_wakes_its_key_once_and_stays_the_callers() -> None:
    woken: list[str] = []
    event = threading.Event()
    watcher = ExitWatcher(lambda key: (woken.append(key), event.set()))
    watcher.start()
    read_end, write_end = os.pipe()
    try:
        watcher.watch_readable("job-a", read_end)
        assert not event.wait(0.1)  # nothing to read yet
        os.write(write_end, b'{"ready": true}\n')
        assert event.wait(5)
        os.write(write_end, b"more\n")  # one wake only: the loop reads the pipe itself from then on
        assert not threading.Event().wait(0.1) and woken == ["job-a"]
        assert os.read(read_end, 100).startswith(b'{"ready"')  # still open, still the caller's to read
    finally:
        watcher.stop()
        os.close(read_end)
        os.close(write_end)
