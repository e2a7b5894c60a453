"""The files and environment a standby trainer and the daemon's standby runner share (both sides import this).

A standby lives in the attempt dir it would become. Its ranks say they are
ready, the daemon hands the attempt over, and every rank takes the job's lock
through one open file the daemon gave the standby's monitor:

    standby-ready.json            a one-rank standby: ready (pid, modules) or {"failed": why}
    standby-ready.rank<R>.json    rank R of a standby of several ranks (rank 0 too: the plain name
                                  must never say "ready" while another rank still imports)
    handover.json                 the daemon's: the cold attempt's argv and environment, the job's
                                  lock path and, with several ranks, the attempt's MASTER_PORT
"""

from __future__ import annotations

READY_FILE = "standby-ready.json"
HANDOVER_FILE = "handover.json"
# The job's lock file, opened by the daemon (not locked) and inherited by the standby's monitor and ranks:
# the fd number, which ``pass_fds`` keeps the same in every process.
LOCK_FD_ENV = "ML_SUPERVISOR_LOCK_FD"
# The niceness a standby prepares at (set by the runner only where it can give the priority back at the
# handover; read by the trainer before its first import).
NICE_ENV = "ML_SUPERVISOR_STANDBY_NICE"
# The last argument of a job's zygote (trainer/zygote.py), and a variable of its environment: room in its
# memory, which the monitors and ranks it forks overwrite with the command line and the environment an exec
# would have given them (trainer/proctitle.py).
ROOM_ARG = "--reserved-for-forked-command-lines=" + "-" * 16384
ROOM_ENV = ("ML_SUPERVISOR_ENVIRONMENT_ROOM", "-" * 16384)


def ready_file_name(rank: int, world_size: int) -> str:
    """The ready file of ``rank`` in a standby of ``world_size`` ranks."""
    if world_size <= 1:
        return READY_FILE
    return f"standby-ready.rank{rank}.json"
