"""The job state machine: one enum and one explicit table of allowed transitions.

Every change of a job's state goes through ``Store.transition``, which checks
this table, stamps the time, persists the change and records an event in one
SQLite transaction.

    queued ──► starting ──► running ──► backoff ──► starting ...
       │           │           │           │
       └───────────┴─────┬─────┴───────────┘
                         ▼
                      stopping ──► completed | failed | stopped

``backoff`` is the pause between an attempt's end and the next launch (zero for
the first restart of a failing streak); ``queued`` is waiting for resources
(GPUs) or the first launch; ``stopping`` is a graceful stop in progress.
"""

from __future__ import annotations

from enum import StrEnum

from supervisor.errors import InvalidTransition


class JobState(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.STOPPED})

_S = JobState
ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # queued -> completed/failed: the budget ran out, or the job can never be placed; -> backoff: its launch failed
    # before anything started (the spawn, or the owner's account gone): it waits and tries again
    _S.QUEUED: frozenset({_S.STARTING, _S.BACKOFF, _S.STOPPED, _S.COMPLETED, _S.FAILED}),
    # starting -> queued: pre-flight found the GPUs busy; -> backoff: the launch itself failed
    _S.STARTING: frozenset({_S.RUNNING, _S.QUEUED, _S.BACKOFF, _S.STOPPING, _S.COMPLETED, _S.FAILED, _S.STOPPED}),
    _S.RUNNING: frozenset({_S.BACKOFF, _S.STOPPING, _S.COMPLETED, _S.FAILED, _S.STOPPED}),
    _S.BACKOFF: frozenset({_S.STARTING, _S.QUEUED, _S.STOPPED, _S.COMPLETED, _S.FAILED}),
    # stopping -> backoff: a restart the daemon asked for (hang, GPU fault, supervisorctl restart)
    _S.STOPPING: frozenset({_S.BACKOFF, _S.COMPLETED, _S.FAILED, _S.STOPPED}),
    # a finished job can be restarted by the user: it continues from its best checkpoint
    _S.COMPLETED: frozenset({_S.QUEUED}),
    _S.FAILED: frozenset({_S.QUEUED}),
    _S.STOPPED: frozenset({_S.QUEUED}),
}

# Where a job is found after a daemon restart, a trainer may be alive.
LIVE_STATES = frozenset({JobState.STARTING, JobState.RUNNING, JobState.STOPPING})


def check_transition(current: JobState, new: JobState) -> None:
    """Raise ``InvalidTransition`` unless ``current -> new`` is in the table."""
    if new not in ALLOWED_TRANSITIONS[current]:
        raise InvalidTransition(f"a {current.value} job cannot become {new.value}")
