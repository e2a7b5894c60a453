"""The one error hierarchy of the supervisor, each error with a stable code.

The API returns ``code`` and ``message``; ``supervisorctl`` maps the code to an
exit status, so scripts can rely on both.
"""

from __future__ import annotations


class SupervisorError(Exception):
    """Base of every error the supervisor reports to a user."""

    code: str = "error"
    exit_status: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        """The wire form the API sends back."""
        return {"code": self.code, "message": self.message}


class ConfigError(SupervisorError):
    """A job config is unreadable or invalid. The message names the file and the key."""

    code = "config_invalid"
    exit_status = 2

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


class JobNotFound(SupervisorError):
    code = "job_not_found"
    exit_status = 3


class StoreError(SupervisorError):
    """The database cannot be used by this version (e.g. written by a newer ml-supervisor)."""

    code = "store_error"


class InvalidTransition(SupervisorError):
    code = "invalid_transition"
    exit_status = 4


class DaemonUnavailable(SupervisorError):
    code = "daemon_unavailable"
    exit_status = 5


class AlreadyRunning(SupervisorError):
    code = "already_running"
    exit_status = 6


class ResourceUnavailable(SupervisorError):
    """The node cannot satisfy a request (e.g. more GPUs than it has)."""

    code = "resource_unavailable"
    exit_status = 7


class CallTimedOut(SupervisorError):
    """The daemon's loop did not get to a request in time; it was cancelled and will not run later."""

    code = "timed_out"
    exit_status = 8


class CallPending(SupervisorError):
    """The daemon's loop started a request but did not finish it in time; it finishes on its own."""

    code = "pending"
    exit_status = 9


ERRORS_BY_CODE: dict[str, type[SupervisorError]] = {
    cls.code: cls
    for cls in (SupervisorError, ConfigError, JobNotFound, InvalidTransition, DaemonUnavailable,
                AlreadyRunning, ResourceUnavailable, CallTimedOut, CallPending)
}
