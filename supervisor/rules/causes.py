"""The typed vocabularies shared by outcome, policy, store, alerts and the views.

Three things were all called "reason" once; each has its own name now:

- ``Cause``: why one *attempt* ended (``attempts.reason`` in the store and in
  ``status --json``, the field name stays as documented);
- ``EndReason``: why the *job* ended (``jobs.end_reason``);
- the exit record's ``reason``: how ``fit`` returned (``ExitRecord.reason``,
  called the *completion reason* on the daemon side).

All are ``StrEnum``: they compare equal to, and serialize as, the strings the
JSON fields and the database have always held.
"""

from __future__ import annotations

from enum import StrEnum


class Cause(StrEnum):
    """Why an attempt ended."""

    COMPLETED = "completed"
    CRASH = "crash"
    HANG = "hang"
    GPU_FAULT = "gpu_fault"
    REBOOT = "reboot"
    VANISHED = "vanished"
    USER_STOP = "user_stop"
    USER_RESTART = "user_restart"
    BUDGET = "budget"
    CONFIG_ERROR = "config_error"
    DIVERGED = "diverged"  # the loss went non-finite or spiked: roll back to a checkpoint before it
    STRAGGLER = "straggler"  # stopped to move off a straggling GPU (supervision.stragglers.action)
    RESIZE = "resize"  # elastic DDP: stopped after a checkpoint to grow back onto returned GPUs (planned)


class EndReason(StrEnum):
    """Why a job reached its terminal state."""

    FINISHED = "finished"
    BUDGET = "budget"
    MAX_RESTARTS = "max_restarts"
    NO_PROGRESS = "no_progress"
    USER = "user"
    CONFIG_ERROR = "config_error"
    DIVERGED = "diverged"  # more divergences than max_rollbacks


class EventKind(StrEnum):
    """Kinds of rows in the events table (``supervisorctl events``, the web page).

    A state transition records its own kind (``launch``, ``restart``, ``waiting``,
    ``requeued``) or, by default, the new state's name.
    """

    SUBMITTED = "submitted"
    LAUNCH = "launch"
    RESTART = "restart"
    WAITING = "waiting"
    REQUEUED = "requeued"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    QUEUED = "queued"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    ATTEMPT_ENDED = "attempt_ended"
    CHECKPOINT = "checkpoint"
    CHECKPOINT_REJECTED = "checkpoint_rejected"
    CHECKPOINT_REQUESTED = "checkpoint_requested"
    LAUNCH_FAILED = "launch_failed"
    PREFLIGHT = "preflight"
    STACKS = "stacks"
    SIGKILL = "sigkill"
    REBOOT = "reboot"
    COLLECTED = "collected"
    ADOPTED = "adopted"
    GPU = "gpu"
    XID = "xid"
    STRAGGLER = "straggler"  # a rank runs well below its peers' pace
    SLOW = "slow"  # a single-process job runs well below its own pace
    RESIZE = "resize"  # elastic DDP: an attempt runs at another world size than the one before it
    NODE_EXCLUDED = "node_excluded"  # a node left out of the next attempt (down, drained)
    SPARE_USED = "spare_used"  # a spare node of the allocation took a left-out node's place
