"""The daemon's runners, one per backend, and the questions the core asks of them and of their records."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from omegaconf import DictConfig

from supervisor.errors import SupervisorError
from supervisor.runners.backend import Backend
from supervisor.runners.base import AttemptRunner, StandbyRunner
from supervisor.runners.registry import backend_of
from supervisor.store import AttemptRow


class RunnerSet:
    """Runners by backend name (new attempts) and by kind (attempts found in the store)."""

    def __init__(self, runners: Mapping[str, AttemptRunner]) -> None:
        self._by_backend = dict(runners)
        self._by_kind = {runner.kind: runner for runner in runners.values()}

    def __iter__(self) -> Iterator[AttemptRunner]:
        return iter(self._by_backend.values())

    def backend(self, cfg: DictConfig) -> Backend:
        """The backend record of a job's frozen config."""
        return backend_of(cfg)

    def for_job(self, cfg: DictConfig) -> AttemptRunner:
        """The runner new attempts of a job with this frozen config use."""
        name = backend_of(cfg).name
        runner = self._by_backend.get(name)
        if runner is None:
            raise SupervisorError(f"this daemon has no {name!r} runner (it has: {', '.join(sorted(self._by_backend))})")
        return runner

    def for_attempt(self, attempt: AttemptRow) -> AttemptRunner:
        """The runner that started ``attempt`` (by its persisted kind)."""
        runner = self._by_kind.get(attempt.runner_kind)
        if runner is None:  # a newer daemon's runner, or one not configured here: say so, never guess
            raise SupervisorError(f"attempt {attempt.n} of job {attempt.job_id} was started by the runner "
                                  f"{attempt.runner_kind!r}, which this daemon does not have "
                                  f"(it has: {', '.join(sorted(self._by_kind))})")
        return runner

    def standby_for(self, cfg: DictConfig) -> StandbyRunner | None:
        """The runner that keeps standbys for a job with this config, or None (its backend has none)."""
        if not backend_of(cfg).supports_standby:
            return None
        runner = self.for_job(cfg)
        return runner if isinstance(runner, StandbyRunner) else None

    def standby_runners(self) -> list[StandbyRunner]:
        """Every runner that keeps standbys."""
        return [runner for runner in self._by_backend.values() if isinstance(runner, StandbyRunner)]

    def tick(self) -> None:
        for runner in self._by_backend.values():
            runner.tick()

    def forget(self, job_id: str) -> None:
        for runner in self._by_backend.values():
            runner.forget(job_id)

    def release(self, job_id: str) -> None:
        """The job ended for good: every runner gives back what it held for the job's next attempt."""
        for runner in self._by_backend.values():
            runner.release(job_id)

    def close(self) -> None:
        for runner in self._by_backend.values():
            runner.close()
