"""The supervisor core: one loop that launches, watches, stops and relaunches jobs (``Supervisor``)."""

from supervisor.core.supervisor import AlertHook, Supervisor

__all__ = ["AlertHook", "Supervisor"]
