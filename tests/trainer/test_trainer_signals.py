"""Real signals sent to a real training process.

Five processes: SIGTERM during the imports; SIGUSR2 + SIGUSR1 to one fit that
then completes; SIGTERM to another (to its pid) and to a third (to its process
group); and a resume from the SIGTERM checkpoint that stops itself for its
``--deadline``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from trainer_testkit import DIGITS_CONFIG, REPO, TrainerRun, is_complete_zip, start_trainer, trainer_env

from supervisor.jobfiles.exitrecord import ExitRecord, read_exit_record
from supervisor.jobfiles.layout import AttemptLayout
from supervisor.jobfiles.manifest import live_checkpoints

pytestmark = pytest.mark.lightning

SLOW_MODEL = [
    "model.class_path=trainer.examples.faulty.FaultyDigitsClassifier",
    "model.init_args.step_delay=0.02",
    "logger.wandb.mode=disabled",
]
MAX_STEPS = 120


@dataclass
class Finished:
    run: TrainerRun
    returncode: int
    exit: ExitRecord | None


def finished(run: TrainerRun) -> Finished:
    return Finished(run=run, returncode=run.finish(), exit=run.exit_record())


def test_sigterm_before_the_fit_exits_143_at_once(tmp_path: Path) -> None:
    """During the slow imports there is nothing to save: stop now, say so, exit 143."""
    run = start_trainer(tmp_path / "job", ["logger.wandb.mode=disabled"])
    run.wait_for(lambda: run.heartbeat() is not None, "the first heartbeat", 60, poll=0.005)
    run.send(signal.SIGTERM)
    assert run.finish(timeout=60) == 143, run.output()
    record = run.exit_record()
    assert record is not None
    assert (record.status, record.signal, record.checkpoint, record.global_step) == ("signal", "SIGTERM", None, 0)
    beat = run.heartbeat()
    assert beat is not None and beat.phase == "done"


# The trainer, with a SIGTERM sent to itself the moment its first heartbeat is on disk: the
# earliest a daemon (or a test) can know it is alive, and before the fit's try used to begin.
SIGTERM_AT_FIRST_BEAT = """
import os, signal, sys
from trainer import cli, progress

original = progress.HeartbeatWriter.write
sent = []

def write_then_sigterm(self, *args, **kwargs):
    original(self, *args, **kwargs)
    if not sent:
        sent.append(True)
        os.kill(os.getpid(), signal.SIGTERM)

progress.HeartbeatWriter.write = write_then_sigterm
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_right_after_the_first_heartbeat_is_an_exit_record_not_a_traceback(tmp_path: Path) -> None:
    """The window between the first beat and the slow imports: still a clean stop, exit 143, no traceback."""
    attempt_dir = tmp_path / "job" / "attempts" / "1"
    attempt_dir.mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-c", SIGTERM_AT_FIRST_BEAT, "--config", str(DIGITS_CONFIG),
         "--attempt-dir", str(attempt_dir), "logger.wandb.mode=disabled"],
        cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr
    record = read_exit_record(AttemptLayout(attempt_dir).exit_record)
    assert record is not None and (record.status, record.signal) == ("signal", "SIGTERM")


# --- SIGUSR2 (stacks) and SIGUSR1 (save, keep going) -----------------------------------------------


@dataclass
class UsrResult:
    done: Finished
    usr1_sent_at_step: int
    stacks: str


@pytest.fixture(scope="module")
def usr_signals(tmp_path_factory: pytest.TempPathFactory) -> UsrResult:
    root = tmp_path_factory.mktemp("usr") / "job"
    # No scheduled saves at all (no top-k, no last.ckpt): every save line comes from SIGUSR1.
    run = start_trainer(root, [*SLOW_MODEL, f"trainer.max_steps={MAX_STEPS}", "trainer.max_epochs=100",
                               "checkpoint.save_top_k=0", "checkpoint.save_last=false"])
    run.wait_for_step(3)
    stacks_path = run.attempt_dir / "stacks.txt"
    run.send(signal.SIGUSR2)
    run.wait_for(lambda: "File" in stacks_path.read_text(errors="replace"), "stacks.txt to be written", 30)
    time.sleep(0.2)  # faulthandler writes every thread in one go; let it finish
    stacks = stacks_path.read_text(errors="replace")
    sent_at = run.wait_for_step(5).step
    run.send(signal.SIGUSR1)
    run.wait_for(lambda: any(e["event"] == "save" for e in run.manifest_events()), "the SIGUSR1 save", 30)
    return UsrResult(done=finished(run), usr1_sent_at_step=sent_at, stacks=stacks)


def test_sigusr2_dumps_every_thread_stack(usr_signals: UsrResult) -> None:
    stacks = usr_signals.stacks
    assert "Current thread" in stacks or "Thread 0x" in stacks
    assert "pytorch_lightning" in stacks  # the main thread, inside the fit loop


def test_sigusr1_saves_last_and_training_goes_on(usr_signals: UsrResult) -> None:
    done = usr_signals.done
    saves = [e for e in done.run.manifest_events() if e["event"] == "save"]
    assert len(saves) == 1, saves
    save = saves[0]
    assert save["kind"] == "last" and save["path"].endswith("/last.ckpt")
    assert usr_signals.usr1_sent_at_step <= save["step"] < MAX_STEPS
    assert is_complete_zip(save["path"])
    # ...and the fit went on to its end (after SIGUSR2 too).
    assert done.returncode == 0, done.run.output()
    assert done.exit is not None
    assert (done.exit.status, done.exit.reason, done.exit.global_step) == ("completed", "max_steps", MAX_STEPS)


# --- SIGTERM: save on the way out, exit 143 --------------------------------------------------------


@dataclass
class TermResult:
    done: Finished
    sent_at_step: int


@pytest.fixture(scope="module")
def sigterm(tmp_path_factory: pytest.TempPathFactory) -> TermResult:
    """SIGTERM to the trainer's own pid, with DataLoader worker processes running."""
    root = tmp_path_factory.mktemp("term") / "job"
    run = start_trainer(root, [*SLOW_MODEL, "trainer.max_epochs=100", "data.init_args.num_workers=2"])
    sent_at = run.wait_for_step(7).step
    run.send(signal.SIGTERM)
    return TermResult(done=finished(run), sent_at_step=sent_at)


def test_sigterm_exits_143_with_a_signal_record(sigterm: TermResult) -> None:
    done = sigterm.done
    assert done.returncode == 128 + signal.SIGTERM == 143, done.run.output()
    record = done.exit
    assert record is not None
    assert (record.status, record.signal) == ("signal", "SIGTERM")
    assert record.global_step >= sigterm.sent_at_step
    assert record.checkpoint == str(done.run.job.checkpoints / "last.ckpt")


def test_sigterm_saves_a_valid_signal_checkpoint(sigterm: TermResult) -> None:
    import torch

    done = sigterm.done
    assert done.exit is not None
    last_event = done.run.manifest_events()[-1]
    assert last_event["event"] == "save" and last_event["kind"] == "signal"
    assert last_event["path"] == done.exit.checkpoint
    assert last_event["step"] == done.exit.global_step
    assert is_complete_zip(last_event["path"])
    assert torch.load(last_event["path"], map_location="cpu", weights_only=False)["global_step"] == last_event["step"]
    beat = done.run.heartbeat()
    assert beat is not None and beat.phase == "done"


def test_sigterm_to_the_whole_group_kills_the_workers_first(tmp_path: Path) -> None:
    """SIGTERM to the process group also reaches the DataLoader workers, which die at once (PyTorch's
    worker handler); the fit then fails from a SIGCHLD handler at an arbitrary point of a step, where
    nothing can be saved safely. The record still says it was the signal, and why no checkpoint.
    (So a graceful stop must signal the trainer's pid only, see test above.)"""
    run = start_trainer(tmp_path / "job", [*SLOW_MODEL, "trainer.max_epochs=100", "data.init_args.num_workers=2"])
    run.wait_for_step(7)
    os.killpg(run.proc.pid, signal.SIGTERM)
    done = finished(run)
    assert done.returncode == 143, done.run.output()
    record = done.exit
    assert record is not None
    assert (record.status, record.signal) == ("signal", "SIGTERM")
    signal_saves = [e["path"] for e in done.run.manifest_events() if e.get("kind") == "signal"]
    if record.checkpoint is None:  # the usual case: the SIGCHLD error came first, nothing saved
        assert signal_saves == []
        if record.message is not None:
            assert "DataLoader worker" in record.message
    else:  # the signal happened to land at a batch boundary and the save completed
        assert signal_saves == [record.checkpoint] and is_complete_zip(record.checkpoint)


# --- resume from the SIGTERM checkpoint, stopped by --deadline ------------------------------------

DEADLINE_IN = 40.0  # seconds after launch; generous, the import alone can take 20 s on a busy box


@pytest.fixture(scope="module")
def resumed_until_deadline(sigterm: TermResult) -> tuple[Finished, float]:
    assert sigterm.done.exit is not None and sigterm.done.exit.checkpoint is not None
    deadline = time.time() + DEADLINE_IN
    run = start_trainer(sigterm.done.run.job.root, [*SLOW_MODEL, "trainer.max_epochs=1000"],
                        attempt=2, restarts=1, ckpt=sigterm.done.exit.checkpoint, deadline=deadline)
    return finished(run), deadline


def test_deadline_stops_the_resumed_fit_in_time_with_a_final_save(
    sigterm: TermResult, resumed_until_deadline: tuple[Finished, float],
) -> None:
    done, deadline = resumed_until_deadline
    assert done.returncode == 0, done.run.output()
    record = done.exit
    assert record is not None
    assert (record.status, record.reason) == ("completed", "deadline")
    assert record.time < deadline  # stopped with its safety margin
    # The step continued from the signal checkpoint...
    assert sigterm.done.exit is not None
    assert record.global_step > sigterm.done.exit.global_step
    # ...and the final state was saved, so the job can go on after a budget extension.
    newest = max(live_checkpoints(done.run.job.manifest), key=lambda e: (e.step, e.time))
    assert (newest.step, newest.kind, newest.attempt) == (record.global_step, "last", 2)
    assert is_complete_zip(newest.path)
