"""A chaos soak: many jobs under one live daemon, faults injected at random times from a seed.

Used by ``bench/chaos_soak.py`` (the full soak) and ``tests/chaos/`` (a few injections of
each kind, the same invariants). Each job carries one planned fault (``chaos_faults.KINDS``);
several jobs run at once, so faults meet each other (a daemon kill or a reboot hits every
running job, in whatever state it is: backoff, hang, starting). After every restart and at
each job's end the invariants of ``chaos_checks`` are checked and violations counted per kind.

``faults_per_job`` > 1: a job of a kind in ``faults.REPEATABLE`` takes that many injections
of its kind in sequence, the next one armed only once the previous one's restart was seen
(a new attempt running, the GPU healed), each followed by its checks. Every landed
injection counts once for its kind; a daemon kill or a reboot counts once, though it hits
every running job. ``SoakResult.busy`` and ``phases`` say where the soak's time went.

The ``nan`` jobs are transient and persistent in turn (the first persistent); a persistent one must end
failed/diverged (``checks.check_gave_up_diverged``) instead of completed. While a ``hostile_files``
injection is in place, every ``status`` the loop asks (of any job) must answer within
``faults.HOSTILE_ANSWER_S``, and the daemon must still be alive when it is undone.
"""

from __future__ import annotations

import json
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

from supervisor.alerts.store import read_alerts
from supervisor.api.client import Client
from supervisor.core.submit import SubmitRequest, load_request_config
from supervisor.errors import JobNotFound, SupervisorError
from supervisor.jobfiles.atomic import read_json
from tests.support import chaos_checks as checks
from tests.support import chaos_faults as faults
from tests.support.chaos_hostile import HostileFiles
from tests.support.harness import DaemonProc, fake_env, real_env

FAKE_JOB_TIMEOUT_S = 180.0
REAL_JOB_TIMEOUT_S = 600.0
EXTRA_FAULT_TIMEOUT_S = 60.0  # more time for each injection a job takes after its first (a restart each)


@dataclass
class JobRun:
    """One job of the soak and what happened to it."""

    kind: str
    real: bool
    job_id: str
    config: Path
    target: int
    trigger: int
    budget_s: float | None
    resume_from: str
    submitted: float
    injected_at: float | None = None
    injected_attempt: int | None = None
    gpu: int | None = None
    ballast: Path | None = None
    mounted: bool = False
    corrupted: dict[str, list[float]] = field(default_factory=dict)  # path -> each time the soak broke it
    checked_attempts: int = 1
    restart_s: float | None = None
    violations: list[str] = field(default_factory=list)
    faults: int = 1  # injections planned for this job (of its kind, in sequence)
    landed: int = 0
    running_at: float | None = None  # when the soak first saw its first attempt running
    last_restart_at: float | None = None
    persistent: bool = False  # the nan kind: NaN on every attempt (the job must give up), else the first only
    hostile: HostileFiles | None = None  # the hostile_files kind: planted now, undone at hostile_until
    hostile_until: float = 0.0


@dataclass
class SoakResult:
    """Per kind: injections, violations, restart times; the violating jobs' histories; skipped kinds."""

    injections: dict[str, int] = field(default_factory=dict)
    violations: dict[str, int] = field(default_factory=dict)
    restart_times: dict[str, list[float]] = field(default_factory=dict)
    histories: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    real_injections: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    wall_s: float = 0.0
    busy: dict[str, float] = field(default_factory=dict)  # seconds the soak's loop spent blocked, by activity
    phases: dict[str, list[float]] = field(default_factory=dict)  # per job: submit->running, ..., -> end

    def profile(self) -> str:
        """Where the time went: the loop's blocking calls, and the median of each job phase."""
        busy = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(self.busy.items(), key=lambda kv: -kv[1]))
        phases = ", ".join(f"{k} {statistics.median(v):.1f} s (n={len(v)})" for k, v in self.phases.items() if v)
        return f"soak loop blocked: {busy or '-'}\njob phases (median): {phases or '-'}"

    def total_violations(self) -> int:
        return sum(self.violations.values())

    def table(self) -> str:
        """The markdown table: kind x injections x violations, restart-time percentiles."""
        lines = ["| fault kind | injections (real Lightning) | violations | restart p50 s | p90 s | max s |",
                 "|---|---|---|---|---|---|"]
        for kind in faults.KINDS:
            if kind in self.skipped:
                lines.append(f"| {kind} | skipped: {self.skipped[kind]} | | | | |")
                continue
            times = sorted(self.restart_times.get(kind, []))

            def pct(q: float, times: list[float] = times) -> str:
                return f"{times[min(len(times) - 1, int(q * len(times)))]:.1f}" if times else "-"

            lines.append(f"| {kind} | {self.injections.get(kind, 0)} ({self.real_injections.get(kind, 0)}) | "
                         f"{self.violations.get(kind, 0)} | {pct(0.5)} | {pct(0.9)} | "
                         f"{f'{max(times):.1f}' if times else '-'} |")
        return "\n".join(lines)


class Soak:
    """Runs the plan against one live daemon; see the module docstring."""

    def __init__(self, root: Path, *, seed: int, per_kind: int, real: bool = False, concurrency: int = 3,
                 budget_every: int = 5, kinds: tuple[str, ...] = faults.KINDS, log: Any = print,
                 faults_per_job: int = 1) -> None:
        self.root = root
        self.rng = Random(seed)
        self.concurrency = concurrency
        self.budget_every = budget_every
        self.log = log
        self.result = SoakResult()
        self.boots = 0
        why_not = faults.mount_supported() if "disk_full" in kinds else None
        if why_not:
            self.result.skipped["disk_full"] = why_not
            log(f"disk_full left out: {why_not}")
        plan: list[tuple[str, bool, int]] = []  # jobs: (kind, real, injections in sequence)
        for kind in kinds:
            if kind in self.result.skipped:
                continue
            chunk = faults_per_job if kind in faults.REPEATABLE else 1
            plan += [(kind, real, min(chunk, per_kind - i)) for i in range(0, per_kind, chunk)]
        self.rng.shuffle(plan)
        self.plan = plan
        self.planned = per_kind * len({k for k, _, _ in plan})
        self.replans = 0
        self.state = root / "state"
        self.work = root / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        # a GPU per job at once, so that no job waits in the queue for one (and some to move to)
        self.nvml = faults.nvml_file(root / "nvml.json", gpus=max(faults.FAKE_GPUS, concurrency + 2))
        # The trainer module is the daemon's setting: real Lightning jobs get a daemon of their own.
        env = (real_env if real else fake_env)(self.state, ML_SUPERVISOR_NVML=f"fake:{self.nvml}",
                                               ML_SUPERVISOR_BOOT_ID="boot-0")
        self.daemon = DaemonProc(self.state, self.work, env)
        # Lightning jobs: hang_timeout auto, with allowances that fit a soak (start-up on a loaded
        # box can take minutes of imports: a fixed timeout would call that a hang)
        self.settings = ["gpu.poll_interval=0.2"] + (
            ["hang.min_timeout=10", "hang.startup_allowance=300", "hang.phase_allowance=120"] if real else [])
        self.sampler = checks.TrainerSampler(self.state)
        self.active: list[JobRun] = []
        # Submits run in threads: the daemon checks each config in a new interpreter (seconds for
        # Lightning), and the loop must go on injecting meanwhile (a daemon kill may meet a submit).
        self.pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="chaos-submit")
        self.submitting: list[tuple[Future[str], JobRun, SubmitRequest]] = []
        self.n = 0
        self.deadline: float | None = None  # time.monotonic() after which no new job is submitted
        self.daemon_downs: list[tuple[str, float, float]] = []  # (kind, killed, answering again): for histories
        self.abort = threading.Event()  # set from another thread: stop now, clean up, return what was counted
        self.nan_jobs = 0

    # -- driving ------------------------------------------------------------------------------
    def run(self) -> SoakResult:
        started = time.monotonic()
        self.daemon.start(*self.settings)
        self.sampler.start()
        try:
            while (self.plan or self.active or self.submitting) and not self.abort.is_set():
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self.plan.clear()
                while self.plan and len(self.active) + len(self.submitting) < self.concurrency:
                    with self._busy("submit"):
                        self._submit(*self.plan.pop())
                self._collect_submits()
                for run in list(self.active):
                    self._step(run)
                time.sleep(0.2)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.sampler.stop()
            self.result.samples = self.sampler.samples
            if self.daemon.proc is not None:
                self.daemon.kill(signal.SIGTERM)
            self.daemon.kill_leftovers()
            for run in self.active:
                self._undo_hostile(run, check=False)
                if run.mounted:
                    faults.unmount_checkpoint_dir(self._job_dir(run))
        self.result.wall_s = time.monotonic() - started
        return self.result

    @contextmanager
    def _busy(self, activity: str) -> Iterator[None]:
        """Count the time the loop spends in ``activity`` (every job waits for it: the profile)."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.result.busy[activity] = self.result.busy.get(activity, 0.0) + time.monotonic() - started

    def _phase(self, name: str, seconds: float) -> None:
        self.result.phases.setdefault(name, []).append(seconds)

    def _submit(self, kind: str, real: bool, n_faults: int = 1) -> None:
        self.n += 1
        name = f"{'real' if real else 'fake'}-{kind.replace('_', '-')}-{self.n}"
        budget_s = float(self.rng.randint(10, 20)) if self.n % self.budget_every == 0 and not real else None
        make = faults.real_job if real else faults.fake_job
        n_faults = 1 if budget_s else n_faults  # a budget job is due by time: one fault
        persistent = False
        if kind == "nan":  # persistent and transient in turn: a short soak sees both
            persistent = self.nan_jobs % 2 == 0
            self.nan_jobs += 1
        config, target, trigger = make(self.work, name, kind, self.rng, budget_s, n_faults, nan_persistent=persistent)
        cfg_text = config.read_text()
        resume_from = "best"
        for value in ("best", "last", "auto"):
            if f"resume_from: {value}" in cfg_text:
                resume_from = value
        # through the API in-process, as supervisorctl does it: no interpreter start per job on a loaded box
        request = SubmitRequest(config_path=str(config), cwd=str(self.work), config_text=cfg_text)
        load_request_config(request)
        run = JobRun(kind, real, "", config, target, trigger, budget_s, resume_from, time.time(), faults=n_faults,
                     persistent=persistent)
        self.submitting.append((self.pool.submit(self._call_submit, request), run, request))

    def _call_submit(self, request: SubmitRequest) -> str:
        reply = self.daemon.client().call("submit", config_path=request.config_path, cwd=request.cwd,
                                          config_text=request.config_text, overrides=[], name=None)
        return str(reply["id"])

    def _collect_submits(self) -> None:
        """Track each job whose submit returned; one that failed (a daemon killed under it) is looked up
        by its name once a daemon answers (the job may have been stored), else submitted again."""
        for item in list(self.submitting):
            future, run, request = item
            if not future.done():
                continue
            try:
                run.job_id = future.result()
            except Exception as exc:  # the daemon went down during the call (a daemon kill or a reboot)
                if self.daemon.proc is None or not self.daemon.client().available():
                    continue  # look again once a daemon answers
                name = Path(request.config_path).stem
                # by id prefix (ids are "<name>-<suffix>"): one indexed lookup, where "list" reads every
                # job's files (half a minute with hundreds of jobs on a loaded box, and the loop waits)
                found = []
                try:
                    found = [self.daemon.client().call("status", job=f"{name}-")]
                except SupervisorError as lookup:
                    if "ambiguous" in str(lookup):  # a job duplicated by one submit: counted, not tracked
                        self.result.violations[run.kind] = self.result.violations.get(run.kind, 0) + 1
                        self.log(f"  VIOLATION {name} ({run.kind}): one submit made several jobs: {lookup}")
                        self.submitting.remove(item)
                        continue
                    if not isinstance(lookup, JobNotFound):
                        continue  # the daemon went down again: look later
                if not found:
                    self.log(f"  {name}: submit failed ({str(exc)[:80]}), no job stored: submitted again")
                    self.submitting.remove(item)
                    self.submitting.append((self.pool.submit(self._call_submit, request), run, request))
                    continue
                run.job_id = str(found[0]["id"])
                self.log(f"  {name}: submit failed ({str(exc)[:80]}), but the daemon stored it: {run.job_id}")
            self.submitting.remove(item)
            self._phase("submit call", time.time() - run.submitted)
            self.active.append(run)

    def _client(self, run: JobRun | None = None) -> Client:
        """The API; while a hostile file is in place (and about its victim, since), calls that give up in time:
        a daemon stuck on the file must be counted, not hold the soak."""
        if any(other.hostile is not None for other in self.active) or (
                run is not None and run.kind == "hostile_files" and run.landed):
            return Client(self.state, timeout=faults.HOSTILE_CALL_TIMEOUT_S)
        return self.daemon.client()

    def _status(self, run: JobRun) -> dict[str, Any] | None:
        try:
            return dict(self._client(run).call("status", job=run.job_id))
        except Exception:  # the daemon may be down between a kill and its restart
            return None

    def _job_dir(self, run: JobRun) -> Path:
        return self.state / "jobs" / run.job_id

    def _step(self, run: JobRun) -> None:
        asked = time.monotonic()
        status = self._status(run)
        self._check_answer_time(run, time.monotonic() - asked)
        if run.hostile is not None:
            if time.time() >= run.hostile_until:
                self._undo_hostile(run)
            else:  # its logs too (stdout, stderr: maybe the planted file)
                asked = time.monotonic()
                try:
                    self._client().call("logs", job=run.job_id, offsets={"stdout": 0, "stderr": 0})
                except Exception:
                    pass  # what counts is that the answer came in time
                self._check_answer_time(run, time.monotonic() - asked, "logs")
        if status is None:
            return
        attempts = status["attempts"]
        if run.running_at is None and status["state"] == "running" and attempts:
            run.running_at = time.time()
            self._phase("submit->running", run.running_at - run.submitted)
        if run.injected_at is None and self._due(run, status):
            if run.landed == 0 and run.running_at is not None:
                self._phase("running->first fault", time.time() - run.running_at)
            with self._busy(f"inject {run.kind}"):
                self._inject(run, status)
            status = self._status(run) or status
            attempts = status["attempts"]
        with self._busy("restart checks"):
            self._check_new_attempts(run, attempts)
        if run.ballast is not None and len(attempts) > (run.injected_attempt or 0):
            run.ballast.unlink(missing_ok=True)  # the save failed and the attempt ended: the space comes back
            run.ballast = None
        if run.gpu is not None and len(attempts) > (run.injected_attempt or 0) and attempts[-1]["gpus"] != [run.gpu]:
            self._heal_gpu(run.gpu)
            run.gpu = None
        if self._rearm_due(run, status):
            self._rearm(run, status)
        if status["state"] in checks.TERMINAL:
            with self._busy("final checks"):
                self._finish(run, status)
        elif time.time() - run.submitted > ((REAL_JOB_TIMEOUT_S if run.real else FAKE_JOB_TIMEOUT_S)
                                            + EXTRA_FAULT_TIMEOUT_S * (run.faults - 1)):
            run.violations.append(f"stuck in {status['state']} after {time.time() - run.submitted:.0f} s")
            self.daemon.ctl("stop", run.job_id, check=False)
            try:
                self._finish(run, self.daemon.wait_state(run.job_id, *checks.TERMINAL, timeout=60))
            except AssertionError as exc:  # not even a stop ends it: count it, leave it
                run.violations.append(f"does not stop: {str(exc)[:200]}")
                self._finish(run, status)

    def _rearm_due(self, run: JobRun, status: dict[str, Any]) -> bool:
        """The last injection's restart was seen and its traces are cleared: the next one may be armed."""
        if run.injected_at is None or run.landed >= run.faults or status["state"] != "running":
            return False
        if run.gpu is not None or run.ballast is not None or run.restart_s is None:
            return False
        last = status["attempts"][-1]
        return run.kind == "daemon_kill" or (last["n"] > (run.injected_attempt or 0) and last.get("ended_at") is None)

    def _rearm(self, run: JobRun, status: dict[str, Any]) -> None:
        assert run.restart_s is not None
        self.result.restart_times.setdefault(run.kind, []).append(run.restart_s)
        run.injected_at = run.injected_attempt = run.restart_s = None
        # past two more checkpoints than the resume point (every 5 steps; the fake trainer's second one scores
        # better than the resume point, the first may not), so every attempt makes progress from its best
        run.trigger = int(status.get("global_step") or 0) + self.rng.randint(11, 16)

    def _due(self, run: JobRun, status: dict[str, Any]) -> bool:
        if status["state"] != "running" or not status["attempts"]:
            return False
        if run.kind in faults.CONFIG_FAULTS:  # the trainer misbehaves by itself; note when it did
            return len(status["attempts"]) > 1 or status["attempts"][0].get("ended_at") is not None
        if run.kind == "hostile_files":  # the first attempt only: it stops writing its files at its trigger
            return len(status["attempts"]) == 1 and int(status.get("global_step") or 0) >= run.trigger
        if run.budget_s and time.time() - run.submitted > run.budget_s * 0.6:
            return True
        return int(status.get("global_step") or 0) >= run.trigger

    def _inject(self, run: JobRun, status: dict[str, Any]) -> None:
        attempt = status["attempts"][-1]
        pid = attempt["pid"]
        run.injected_attempt = attempt["n"] if run.kind not in faults.CONFIG_FAULTS else 1
        run.injected_at = time.time()
        job_dir = self._job_dir(run)
        kind = run.kind
        landed = True  # a signal to a trainer that has just ended lands nowhere: try again at the next poll
        if kind in faults.CONFIG_FAULTS:
            run.injected_at = self._config_fault_time(job_dir, 1)
            if len(status["attempts"]) > 1:  # already relaunched by the time the soak looked
                run.restart_s = max(0.0, float(status["attempts"][1]["started_at"]) - run.injected_at)
        elif kind == "trainer_sigkill":
            landed = faults.kill_trainer(pid)
        elif kind == "hostile_files":
            landed = self._plant_hostile(run, job_dir, attempt["n"])
        elif kind == "rank_kill":
            rank = faults.kill_rank(job_dir / "attempts" / str(attempt["n"]), self.rng)
            landed = rank is not None
            if landed:
                self.log(f"  {run.job_id}: rank {rank} of attempt {attempt['n']} SIGKILLed")
        elif kind == "corrupt_ckpt":
            broken = faults.corrupt_newest(job_dir, pid)
            landed = broken is not None
            if broken:
                run.corrupted.setdefault(broken, []).append(time.time())
        elif kind == "disk_full":
            run.ballast = faults.fill_checkpoint_dir(job_dir, pid)
            run.mounted = run.mounted or run.ballast is not None
            landed = run.ballast is not None
        elif kind in ("xid", "gpu_lost") and attempt["gpus"]:
            run.gpu = attempt["gpus"][0]
            faults.set_gpu(self.nvml, run.gpu, **({"xid": 79} if kind == "xid" else {"lost": True}))
        elif kind == "daemon_kill":
            killed = time.time()
            self.daemon.kill(signal.SIGKILL)
            time.sleep(self.rng.uniform(0.0, 2.0))
            restarted = time.time()
            with self._busy("daemon restart"):
                self.daemon.start(*self.settings)
            self.daemon_downs.append((f"daemon_kill ({run.job_id})", killed, time.time()))
            # the trainer goes on (adopted): the figure is how long the new daemon took to answer
            run.restart_s = time.time() - restarted
        elif kind == "reboot":
            killed = time.time()
            self.daemon.kill(signal.SIGKILL)
            self.daemon.kill_leftovers()  # every process of the state dir dies with the node
            for other in self.active:
                if other.mounted and other.ballast is not None:  # a reboot gives the tmpfs space back
                    other.ballast.unlink(missing_ok=True)
                    other.ballast = None
            self.boots += 1
            with self._busy("daemon restart"):
                self.daemon.start(*self.settings, ML_SUPERVISOR_BOOT_ID=f"boot-{self.boots}")
            self.daemon_downs.append((f"reboot ({run.job_id})", killed, time.time()))
        if not landed:
            run.injected_at = run.injected_attempt = None
            return
        run.landed += 1
        self.result.injections[kind] = self.result.injections.get(kind, 0) + 1
        if run.real:
            self.result.real_injections[kind] = self.result.real_injections.get(kind, 0) + 1

    def _plant_hostile(self, run: JobRun, job_dir: Path, attempt: int) -> bool:
        """Once the trainer stopped writing (its heartbeat still for 0.6 s), a hostile file in place of one of its."""
        beat = job_dir / "attempts" / str(attempt) / "heartbeat.json"
        waited = time.monotonic()
        while time.monotonic() - waited < 3.0:
            try:
                if time.time() - beat.stat().st_mtime >= 0.6:
                    break
            except OSError:
                break
            time.sleep(0.1)
        run.hostile = HostileFiles(job_dir, attempt, self.rng)
        run.hostile.plant()
        run.hostile_until = time.time() + faults.HOSTILE_HOLD_S
        self.log(f"  {run.job_id}: planted {run.hostile.describe()}")
        return True

    def _undo_hostile(self, run: JobRun, check: bool = True) -> None:
        """The hostile file goes; the daemon must have lived through it."""
        if run.hostile is None:
            return
        what = run.hostile.describe()
        run.hostile.undo()
        run.hostile = None
        if check and self.daemon.proc is not None and self.daemon.proc.poll() is not None:
            run.violations.append(f"the daemon exited ({self.daemon.proc.returncode}) while a {what} was in place")

    def _check_answer_time(self, run: JobRun, took: float, op: str = "status") -> None:
        """While a hostile file is in place, every job's status (the victim's logs) answers within its usual bound."""
        if took <= faults.HOSTILE_ANSWER_S:
            return
        for victim in self.active:
            if victim.hostile is not None:
                victim.violations.append(f"{op} of {run.job_id} took {took:.1f} s (> {faults.HOSTILE_ANSWER_S} s) "
                                         f"while a {victim.hostile.describe()} was in place")
                self.log(f"  {victim.job_id}: {victim.violations[-1]}")

    def _config_fault_time(self, job_dir: Path, attempt: int) -> float:
        """When a config-driven fault fired: the exit record (exception) or the last heartbeat (hang)."""
        attempt_dir = job_dir / "attempts" / str(attempt)
        for name in ("exit.json", "heartbeat.json"):
            data = read_json(attempt_dir / name)
            if isinstance(data, dict) and data.get("time"):
                return float(data["time"])
        return time.time()

    def _heal_gpu(self, gpu: int) -> None:
        faults.set_gpu(self.nvml, gpu, lost=False)
        self.daemon.ctl("gpus", "clear", str(gpu), check=False)

    def _check_new_attempts(self, run: JobRun, attempts: list[dict[str, Any]]) -> None:
        """Each relaunched attempt resumed from a verifying checkpoint, the one the policy names."""
        while len(attempts) > run.checked_attempts:
            new = attempts[run.checked_attempts]
            run.checked_attempts += 1
            run.violations += checks.check_resume(self._job_dir(run), new["n"], new.get("resumed_from"),
                                                  run.resume_from, run.corrupted,
                                                  float(new.get("started_at") or time.time()))
            run.violations += checks.check_not_past_bad_step(self._job_dir(run), new["n"], new.get("resumed_from"))
            if new["n"] > 1 and new.get("started_at"):
                run.last_restart_at = float(new["started_at"])
            if run.restart_s is None and run.injected_at is not None and new["n"] > (run.injected_attempt or 0):
                run.restart_s = max(0.0, float(new["started_at"]) - run.injected_at)
                if run.kind == "rank_kill":  # the killed rank's attempt ended whole: no rank outlived it
                    run.violations += checks.check_attempt_ended(
                        self._job_dir(run) / "attempts" / str(run.injected_attempt))

    def _finish(self, run: JobRun, status: dict[str, Any]) -> None:
        self._undo_hostile(run)
        self.active.remove(run)
        if run.gpu is not None:
            self._heal_gpu(run.gpu)
        self._check_new_attempts(run, status["attempts"])
        if run.injected_at is None:
            # the fault never met the job (it ended first, e.g. by its budget): not an injection
            if run.kind in faults.CONFIG_FAULTS and len(status["attempts"]) > 1:
                run.injected_at = self._config_fault_time(self._job_dir(run), 1)
                run.landed += 1
                self.result.injections[run.kind] = self.result.injections.get(run.kind, 0) + 1
            elif run.landed < run.faults:  # not counted; planned again so that every kind gets its number
                missing = run.faults - run.landed
                self.log(f"  {run.job_id}: ended before {missing} of its {run.kind} faults were due; planned again")
                if self.replans < self.planned:  # bounded: a kind that can never be injected must not loop
                    self.replans += missing
                    self.plan.append((run.kind, run.real, missing))
        job_dir = self._job_dir(run)
        if run.persistent:  # the NaN on every attempt: the job must give up, failed (diverged)
            run.violations += checks.check_gave_up_diverged(status, faults.NAN_MAX_ROLLBACKS)
        else:
            run.violations += checks.check_final(status, run.target, run.budget_s)
        run.violations += checks.check_alerts(self.state, status)
        run.violations += checks.check_no_leftovers(self.state, job_dir)
        run.violations += self.sampler.violations_for(run.job_id)
        if run.mounted:
            faults.unmount_checkpoint_dir(job_dir)
        if run.restart_s is not None:
            self.result.restart_times.setdefault(run.kind, []).append(run.restart_s)
        self._phase("last restart->end" if run.last_restart_at else "running->end (no restart)",
                    time.time() - (run.last_restart_at or run.running_at or run.submitted))
        if run.violations:
            self.result.violations[run.kind] = self.result.violations.get(run.kind, 0) + len(run.violations)
            events = self.daemon.client().call("events", job=run.job_id)
            # the daemon kills and reboots (of any job) while this job lived: faults meet
            downs = [d for d in self.daemon_downs if d[2] >= run.submitted]
            self.result.histories.append({"job": run.job_id, "kind": run.kind, "violations": run.violations,
                                          "attempts": status["attempts"], "events": events,
                                          "alerts": read_alerts(self.state, job_id=run.job_id),
                                          "daemon_down_meanwhile": downs})
            self.log(f"  VIOLATION {run.job_id} ({run.kind}): " + "; ".join(run.violations))
        done = sum(self.result.injections.values())
        if run.kind == "rank_kill":  # how the daemon worded each attempt's end: the killed rank, by number
            ends = "; ".join(f"{a['n']}: {a.get('detail')}" for a in status["attempts"])
            self.log(f"  {run.job_id} attempts: {ends}")
        self.log(f"  {run.job_id}: {status['state']}/{status.get('end_reason')} restarts={status['restarts']} "
                 f"step={status.get('global_step')} ({done} injections so far)")


def merge(results: list[SoakResult]) -> SoakResult:
    """One result from several soaks (the fake-trainer one and the real-Lightning one)."""
    out = SoakResult()
    for r in results:
        for mine, theirs in ((out.injections, r.injections), (out.violations, r.violations),
                             (out.real_injections, r.real_injections)):
            for kind, count in theirs.items():
                mine[kind] = mine.get(kind, 0) + count
        for kind, times in r.restart_times.items():
            out.restart_times.setdefault(kind, []).extend(times)
        out.histories += r.histories
        out.skipped.update(r.skipped)
        out.samples += r.samples
        out.wall_s += r.wall_s
        for activity, seconds in r.busy.items():
            out.busy[activity] = out.busy.get(activity, 0.0) + seconds
        for phase, values in r.phases.items():
            out.phases.setdefault(phase, []).extend(values)
    return out


def summary(result: SoakResult) -> str:
    """The table plus the restart-time median over every kind, and each violation's history as JSON."""
    every = [t for times in result.restart_times.values() for t in times]
    text = result.table()
    text += (f"\n\n{sum(result.injections.values())} injections, {result.total_violations()} violations, "
             f"{result.samples} process-table samples, {result.wall_s / 60:.1f} min"
             + (f", restart median {statistics.median(every):.1f} s" if every else ""))
    text += "\n" + result.profile()
    for history in result.histories:
        text += f"\nVIOLATION {history['job']} ({history['kind']}): " + "; ".join(history["violations"])
    for history in result.histories:
        text += "\n\n" + json.dumps(history, indent=1, default=str)
    return text
