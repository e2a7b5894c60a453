"""The daemon's SQLite store of jobs, attempts, events and owed alerts (``Store``) and its row types."""

from supervisor.store.database import Store
from supervisor.store.rows import AttemptRow, EventRow, JobRow, OutboxAlert
from supervisor.store.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "AttemptRow", "EventRow", "JobRow", "OutboxAlert", "Store"]
