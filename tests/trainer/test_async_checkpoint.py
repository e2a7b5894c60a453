"""checkpoint.async: true under real signals: a save in flight at a SIGKILL never shows up as a checkpoint, and a
SIGTERM during one ends with it and the signal's checkpoint both complete, the signal's the newest.

One job, two processes: attempt 1 (a 128 MB ballast buffer, so each background write takes a
while) is SIGKILLed while a write is in flight and the step loop goes on (the heartbeat
says ``train``, not ``checkpoint``: the write is the thread's); attempt 2 resumes from the
newest entry and gets SIGTERM while its own write is in flight.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from trainer_testkit import TrainerRun, is_complete_zip, start_trainer

from supervisor.jobfiles.manifest import CheckpointEntry, live_checkpoints, rank_newest

pytestmark = pytest.mark.lightning

ASYNC_HEAVY = [
    "model.class_path=trainer.examples.faulty.FaultyDigitsClassifier",
    "model.init_args.ballast_mb=128",
    "model.init_args.step_delay=0.05",  # a write in flight spans steps: the test finds one at once
    "checkpoint.every_n_train_steps=8",
    "checkpoint.monitor=null",
    "checkpoint.save_top_k=2",
    "checkpoint.async=true",
    "logger.wandb.mode=disabled",
    "trainer.max_epochs=100",
]


def saves(run: TrainerRun) -> list[dict[str, Any]]:
    return [e for e in run.manifest_events() if e["event"] == "save"]


def in_flight(run: TrainerRun) -> list[Path]:
    """Temp files being written while the step loop trains on (a background write)."""
    beat = run.heartbeat()
    if beat is None or beat.phase != "train":
        return []
    return sorted(run.job.checkpoints.glob(".*.tmp"))


def target_of(tmp: Path) -> str:
    return str(tmp.with_name(tmp.name[1:-len(".tmp")]))


@dataclass
class Outcome:
    killed_rc: int
    killed_target: str  # the file whose write the SIGKILL cut short
    killed_saves: list[dict[str, Any]]
    live_after_kill: list[CheckpointEntry]
    files_after_kill: dict[str, tuple[int, bool]]
    resumed_from: CheckpointEntry
    term: TrainerRun
    term_rc: int
    term_target: str  # the file being written when SIGTERM came


def wait_in_flight(run: TrainerRun, after_saves: int) -> Path:
    found: list[Path] = []

    def writing() -> bool:
        found[:] = in_flight(run) if len(saves(run)) >= after_saves else []
        return bool(found)
    run.wait_for(writing, "a background checkpoint write while training goes on", poll=0.005)
    return found[0]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    root = tmp_path_factory.mktemp("async") / "job"
    run = start_trainer(root, ASYNC_HEAVY)
    tmp = wait_in_flight(run, after_saves=2)
    run.send(signal.SIGKILL)
    killed_rc = run.finish(timeout=30)
    killed_saves = saves(run)
    live = live_checkpoints(run.job.manifest)
    files = {e.path: (Path(e.path).stat().st_size, is_complete_zip(e.path)) for e in live}
    newest = rank_newest(live)[0]

    term = start_trainer(root, ASYNC_HEAVY, attempt=2, restarts=1, ckpt=newest.path)
    term_tmp = wait_in_flight(term, after_saves=len(killed_saves) + 2)
    term.send(signal.SIGTERM)
    term_rc = term.finish(timeout=60)
    return Outcome(killed_rc=killed_rc, killed_target=target_of(tmp), killed_saves=killed_saves,
                   live_after_kill=live, files_after_kill=files, resumed_from=newest, term=term, term_rc=term_rc,
                   term_target=target_of(term_tmp))


def test_a_write_in_flight_at_sigkill_never_shows_up_as_a_checkpoint(outcome: Outcome) -> None:
    assert outcome.killed_rc == -signal.SIGKILL
    assert outcome.live_after_kill
    for entry in outcome.live_after_kill:  # every line names a whole file of its recorded size
        assert outcome.files_after_kill[entry.path] == (entry.size, True), entry
    # The write cut short is never named by a line; what is named was written and checked before its line.
    assert outcome.killed_target not in {e["path"] for e in outcome.killed_saves}
    assert all(e.get("async") is True and e["snapshot_mb"] >= 128 for e in outcome.killed_saves
               if e["kind"] == "topk")


def test_sigterm_during_a_write_ends_with_it_and_the_signal_checkpoint_complete(outcome: Outcome) -> None:
    term = outcome.term
    assert outcome.term_rc == 128 + signal.SIGTERM, term.output()
    record = term.exit_record()
    assert record is not None and record.status == "signal", term.output()
    events = [e for e in term.manifest_events() if e["event"] == "save" and e["attempt"] == 2]
    # The write in flight at the signal was finished and recorded before the signal's own save.
    assert events[-1]["kind"] == "signal" and events[-1]["step"] == record.global_step
    assert any(e["path"] == outcome.term_target for e in events[:-1]), (outcome.term_target, events)
    newest = rank_newest(live_checkpoints(term.job.manifest))[0]
    assert (newest.kind, newest.step, newest.attempt) == ("signal", record.global_step, 2)
    for entry in live_checkpoints(term.job.manifest):
        assert is_complete_zip(entry.path) and Path(entry.path).stat().st_size == entry.size, entry
    assert sorted(p.name for p in term.job.checkpoints.glob(".*.tmp")) == []  # attempt 1's leftover too
    assert record.global_step > outcome.resumed_from.step
