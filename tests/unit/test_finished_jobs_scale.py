"""A daemon that runs for months (issue 35): finished jobs cost it no memory, and ``list`` costs what it shows.

- Memory stays flat while jobs finish in a loop (the core in-process with the daemon's alert hook: before the
  fix every finished job's frozen config stayed cached, ~80 KB each). Counted as the objects the garbage collector
  tracks (what Python keeps, cheap to count), not RSS: an xdist worker's RSS moves by megabytes with whatever
  test ran before on it, and ``tracemalloc`` cannot see the bounded LRU evict what it allocated before it started.
- A store of thousands of finished jobs (copies of jobs the core ran, ``clone_jobs``): ``list`` issues the same
  few indexed queries at 30 and at 3,000 finished jobs (counted with sqlite3's trace callback) and opens no
  file of a finished job (an audit hook sees every ``open`` and listing); ``status`` of one is as cheap at
  3,000 as at 30.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import pytest

from supervisor.api.ops import Operations
from supervisor.config.loader import load_job_config
from supervisor.core import Supervisor
from tests.unit.clone_jobs import clone_jobs, read_seeds
from tests.unit.inprocess_core import Core, OpenCore, core_factory


@pytest.fixture
def open_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenCore]:
    opened: list[Supervisor] = []
    yield core_factory(tmp_path, monkeypatch, opened)
    for sup in opened:
        sup.close()


def _objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def test_memory_stays_flat_while_jobs_finish(open_core: OpenCore) -> None:
    core = open_core()
    for _ in range(20):  # warm up: caches, the allocator's arenas, SQLite's page cache
        core.run_job(checkpoints=2)
    before = _objects()
    for _ in range(50):
        core.run_job(checkpoints=2)
    grown = _objects() - before
    start = _objects()
    one_config = load_job_config(core.config)  # what one cached config holds, measured on this job's config
    per_config = _objects() - start
    del one_config
    # Nothing of a finished job stays in the core: no cached config, tracked attempt, timer or runner handle.
    assert core.sup.tracker.tracked_jobs() == set()
    assert not core.runner.attempts
    assert core.sup.timers.next_due() is None
    # Before the fix every finished job's frozen config stayed cached: ~80 KB and ~500 objects a job (measured).
    assert per_config > 200
    assert grown < 5 * per_config, f"{grown} more objects after 50 finished jobs"


# -- list and status over thousands of finished jobs ------------------------------------------------------------
class Reads:
    """Every open and listing under the given directories while on (``sys.addaudithook`` cannot be removed:
    one hook for the process, switched by the test)."""

    watched: ClassVar[tuple[str, ...]] = ()
    seen: ClassVar[list[str]] = []

    @classmethod
    def hook(cls, event: str, args: tuple[object, ...]) -> None:
        if cls.watched and event in ("open", "os.listdir", "os.scandir") and args:
            path = args[0]
            if isinstance(path, (str, bytes, Path)):
                text = str(path if not isinstance(path, bytes) else path.decode(errors="replace"))
                if text.startswith(cls.watched):
                    cls.seen.append(text)


sys.addaudithook(Reads.hook)


@contextmanager
def counted(core: Core, watched: list[str]) -> Iterator[tuple[list[str], list[str]]]:
    """(SQL statements run on this thread's connection, paths opened under ``watched``) inside the block."""
    statements: list[str] = []
    db = core.store._conn()
    db.set_trace_callback(statements.append)
    Reads.seen = []
    Reads.watched = tuple(watched)
    try:
        yield statements, Reads.seen
    finally:
        Reads.watched = ()
        db.set_trace_callback(None)


def _finished_store(open_core: OpenCore) -> tuple[Core, list[str], list[str]]:
    """A core with 3 jobs it finished itself (with files) and 2 that run: (core, finished ids, running ids)."""
    core = open_core()
    seeds = [core.run_job(checkpoints=3) for _ in range(3)]
    running = [core.submit() for _ in range(2)]
    for job_id in running:
        core.start(job_id)
    return core, seeds, running


def _grow(core: Core, open_core: OpenCore, seeds: list[str], n: int, prefix: str) -> Core:
    """Add ``n`` copies of the finished seeds (the daemon closed meanwhile, as the bench's fast path does)."""
    runner = core.runner
    core.sup.close()
    assert core.sup.store is not None
    clone_jobs(Path(core.sup.state_dir), read_seeds(core.sup.state_dir / "supervisor.db", seeds), n,
               files=True, prefix=prefix)
    return open_core(runner)  # a restart: the running jobs are adopted


def test_list_issues_a_bounded_number_of_queries_and_reads_no_finished_jobs_files(open_core: OpenCore) -> None:
    core, seeds, running = _finished_store(open_core)
    core = _grow(core, open_core, seeds, 27, "a")

    def measure() -> tuple[int, int, int, int]:
        """(queries of the default list, of --all, of one finished job's status, finished jobs)."""
        ops = Operations(core.sup)
        finished_dirs = [j.job_dir + "/" for j in core.store.finished_jobs(limit=None).jobs]
        with counted(core, finished_dirs) as (statements, reads):
            page = ops.op_list_page()  # the default: the active jobs and the latest 50 finished
            assert [j["id"] for j in page["jobs"][:2]] == running and page["active"] == 2
            assert all(j["summary"] for j in page["jobs"][2:]) and not any(j.get("summary") for j in page["jobs"][:2])
            assert len(page["jobs"]) == 2 + min(50, page["finished"]["total"])
            default = len(statements)
            statements.clear()
            everything = ops.op_list()  # --all
            assert len(everything) == 2 + page["finished"]["total"]
            every = len(statements)
            assert reads == []  # no file of a finished job was opened or listed
            statements.clear()
            ops.op_status(page["jobs"][-1]["id"])  # one finished job in full: its own files only
            status = len(statements)
            assert reads and all(r.startswith(page["jobs"][-1]["job_dir"] + "/") for r in reads)
        return default, every, status, page["finished"]["total"]

    default_small, _every_small, status_small, total_small = measure()
    core = _grow(core, open_core, seeds, 2970, "b")
    default_large, every_large, status_large, total_large = measure()
    assert (total_small, total_large) == (30, 3000)
    assert default_large == default_small  # the same queries at 3,000 finished jobs as at 30
    assert every_large <= default_small + 3000 // 500 + 1  # --all: one more attempts query per 500 jobs
    assert status_large == status_small


def test_list_flags_filter_in_the_store(open_core: OpenCore) -> None:
    core, seeds, running = _finished_store(open_core)
    core = _grow(core, open_core, seeds, 200, "c")
    ops = Operations(core.sup)
    now = core.clock()
    page = ops.op_list_page(limit=10, offset=20)
    finished = page["jobs"][2:]
    ended = [j["ended_at"] for j in finished]
    assert len(finished) == 10 and ended == sorted(ended, reverse=True)
    assert page["finished"] == {"total": 203, "offset": 20, "limit": 10, "shown": 10}
    assert page["counts"] == {"completed": 203, "running": 2}
    # the copies end a minute apart, before the seeds: within the hour, the seeds and 60 copies
    recent = ops.op_list_page(limit=None, since=int(now - 3600))
    assert recent["finished"]["total"] == 3 + 60
    assert ops.op_list(states=["running"]) == ops.op_list(all=False)
    assert len(ops.op_list(states=["failed"])) == 0
    assert [j["id"] for j in ops.op_list(all=False)] == running
