"""The chaos soak's faults: job configs that carry a fault, and injectors for the rest.

Fault kinds (``KINDS``):

- ``trainer_sigkill``: SIGKILL the trainer at a random step.
- ``exception``: the trainer raises at a random step (fake: ``crash_at``; Lightning:
  ``FaultyDigitsClassifier(crash_at_step=...)``).
- ``daemon_kill``: SIGKILL the daemon, start a new one after a random pause (0-2 s).
- ``reboot``: SIGKILL the daemon and every process of the state dir, start a new daemon
  with a new boot id (``ML_SUPERVISOR_BOOT_ID``), as tests/integration does.
- ``hang``: the trainer stops making progress (fake: ``hang_at``; Lightning: ``hang_at_step``).
- ``corrupt_ckpt``: the trainer is frozen (SIGSTOP), its newest checkpoint has bytes
  overwritten in the middle (same size, bad CRC), then it is SIGKILLed.
- ``disk_full``: the job's checkpoint dir becomes a small tmpfs (contents copied in)
  filled to the last byte, so the next save fails with ENOSPC; the space comes back once
  the attempt has ended. Needs ``mount`` (root); otherwise skipped, with the reason.
- ``xid``: a fatal Xid (79) on the job's GPU of the simulated NVML.
- ``gpu_lost``: the job's GPU reads as lost (``NVML_ERROR_GPU_IS_LOST``).
- ``rank_kill``: a 2-rank DDP job (``trainer.devices=2``, ``strategy=ddp``, on the CPU: the
  fake trainer plays both ranks, Lightning uses gloo); SIGKILL one rank drawn at random
  (its pid from the attempt monitor's ``monitor.json``). The whole attempt must end.
- ``nan``: the loss diverges at a step (fake: ``nan_at``, sometimes seen ``nan_patience`` steps later as a
  spike, with saves in between that the manifest's ``unusable`` line undoes; Lightning: ``nan_at_step``).
  Transient (the first attempt only: the rollback gets past it) or persistent (``nan_every_attempt``, every
  attempt: the job must end failed/diverged after ``supervision.divergence.max_rollbacks``); the soak draws
  them in turn (``nan_persistent``). Never resumed from a checkpoint at or after a bad step.
- ``hostile_files``: the trainer stops writing (``hang_at``), then a FIFO, a 50 GB sparse file, a directory,
  a link to ``/dev/zero`` or a mount that never answers (``tests/support/chaos_hostile.py``) takes the place
  of a file the daemon reads of the job for ``HOSTILE_HOLD_S``, then goes. Meanwhile every job's ``status``
  answers within ``HOSTILE_ANSWER_S`` and the daemon lives; the job itself restarts after its hang.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from random import Random
from typing import Any

import yaml

from supervisor.jobfiles.layout import AttemptLayout
from supervisor.jobfiles.monitorfiles import read_monitor_start
from tests.support.resume_oracle import live_saves, manifest_lines, newest_first

KINDS = ("trainer_sigkill", "exception", "daemon_kill", "reboot", "hang", "corrupt_ckpt", "disk_full", "xid",
         "gpu_lost", "rank_kill", "nan", "hostile_files")
# Faults that the job's own config carries: the trainer misbehaves by itself at a step.
CONFIG_FAULTS = ("exception", "hang", "nan")
# Faults a job can take several of in sequence (``Soak(faults_per_job=...)``): injected from outside,
# each ending in a restart the soak can wait for. Not the config faults (the config carries one) nor
# disk_full (its tmpfs stays mounted on the checkpoint dir until the job ends).
REPEATABLE = ("trainer_sigkill", "daemon_kill", "reboot", "corrupt_ckpt", "xid", "gpu_lost", "rank_kill")
# Steps a fake or real job gets for each injection after its first (a restart, then 6-12 steps to the next)
STEPS_PER_EXTRA_FAULT = 50  # a loaded box polls slowly: room to see the restart and arm the next
REPO = Path(__file__).resolve().parents[2]
FAKE_GPUS = 4
RANKS = 2  # the rank_kill kind's DDP world size
NAN_MAX_ROLLBACKS = 2  # a persistent nan job's supervision.divergence.max_rollbacks: it ends at the 3rd divergence
HOSTILE_HOLD_S = 3.0  # how long a hostile file stays in place (the daemon polls the job several times)
HOSTILE_ANSWER_S = 5.0  # any status while one is in place: the daemon's file_timeout (2 s), slack for a loaded box
HOSTILE_CALL_TIMEOUT_S = 10.0  # an API call then gives up (a violation): a daemon stuck on the file holds no soak


def nvml_file(path: Path, gpus: int = FAKE_GPUS) -> Path:
    """A simulated NVML with ``gpus`` healthy GPUs."""
    path.write_text(json.dumps({"gpus": [{"index": i, "uuid": f"GPU-chaos-{i}", "name": "Fake H100",
                                          "memory_total_mib": 81559, "lost": False, "xid": []}
                                         for i in range(gpus)]}))
    return path


def set_gpu(nvml: Path, index: int, **fields: Any) -> None:
    """Change one simulated GPU (the backend re-reads the file when it changes); atomic."""
    data = json.loads(nvml.read_text())
    gpu = data["gpus"][index]
    for key, value in fields.items():
        gpu[key] = [*gpu.get("xid", []), value] if key == "xid" else value
    tmp = nvml.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, nvml)


def _supervision(rng: Random, budget_s: float | None, hang_timeout: str, gpus: int = 1) -> dict[str, Any]:
    sup: dict[str, Any] = {
        "gpus": gpus, "resume_from": rng.choice(["best", "last", "auto"]), "hang_timeout": hang_timeout,
        "stop_grace": "3s", "backoff": {"initial": "1s", "max": "2s"},
        # every injected fault is recoverable: a soak must not end jobs through the give-up guards
        "max_restarts": 30, "no_progress_attempts": 10,
    }
    if budget_s is not None:
        sup["budget"] = f"{int(budget_s)}s"
    return sup


def _divergence(persistent: bool) -> dict[str, Any]:
    # a persistent divergence must end the job soon; a transient one is rolled back once
    return {"max_rollbacks": NAN_MAX_ROLLBACKS if persistent else 3}


def fake_job(directory: Path, name: str, kind: str, rng: Random, budget_s: float | None,
             n_faults: int = 1, nan_persistent: bool = False) -> tuple[Path, int, int]:
    """A fake-trainer job for ``kind`` taking ``n_faults`` injections; (config, target steps, first injection step).

    ``nan_persistent``: the ``nan`` kind's loss turns NaN on every attempt (else on the first only).
    """
    steps = rng.randint(60, 120)
    trigger = rng.randint(6, steps // 3)  # early: a loaded box polls slowly, and a job must not end first
    steps += STEPS_PER_EXTRA_FAULT * (n_faults - 1)
    init: dict[str, Any] = {"steps": 100000 if budget_s else steps, "step_time": 0.05, "ckpt_every": 5,
                            "heartbeat_every": 0.2}
    if kind == "exception":
        init["crash_at"] = trigger
    elif kind == "hang":
        init["hang_at"] = trigger
    elif kind == "hostile_files":  # the trainer stops rewriting its files: what the soak plants stays
        init["hang_at"] = trigger + 6  # past the beat that shows step `trigger` (one every ~4 steps)
    elif kind == "nan":
        # seen at once, or as a spike a few steps later (a save in between half the time, every 5 steps)
        init.update(nan_at=trigger, nan_patience=rng.choice([0, 0, 3, 6]), nan_every_attempt=nan_persistent)
    cfg = {"name": name, "model": {"class_path": "fake.Model", "init_args": init},
           "data": {"class_path": "fake.Data"}, "logger": {"wandb": {"mode": "disabled"}},
           "supervision": _supervision(rng, budget_s, "3s", gpus=0 if kind == "rank_kill" else 1)}
    if kind == "rank_kill":  # the monitor starts one fake trainer per rank (RANK=0, 1); rank 0 saves
        cfg["trainer"] = _ddp_on_cpu()
    if kind == "nan":
        cfg["supervision"]["divergence"] = _divergence(nan_persistent)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, steps, trigger


def real_job(directory: Path, name: str, kind: str, rng: Random, budget_s: float | None,
             n_faults: int = 1, nan_persistent: bool = False) -> tuple[Path, int, int]:
    """A real Lightning job (the digits example on the CPU) for ``kind``: a fixed ``max_steps`` target."""
    cfg = yaml.safe_load((REPO / "configs" / "digits.yaml").read_text())
    cfg.pop("ui", None)
    steps = 60 + STEPS_PER_EXTRA_FAULT * (n_faults - 1)
    trigger = rng.randint(12, 40)
    model = {"class_path": "trainer.examples.faulty.FaultyDigitsClassifier",
             "init_args": {**cfg["model"]["init_args"], "step_delay": 0.05}}
    if kind == "exception":
        model["init_args"]["crash_at_step"] = trigger
    elif kind == "hang":
        model["init_args"]["hang_at_step"] = trigger
    elif kind == "hostile_files":
        model["init_args"]["hang_at_step"] = trigger + 1
    elif kind == "nan":  # fault_on_attempt None: every attempt
        model["init_args"].update(nan_at_step=trigger, fault_on_attempt=None if nan_persistent else 1)
    cfg.update(name=name, model=model, logger={"wandb": {"mode": "disabled"}},
               supervision=_supervision(rng, budget_s, "auto", gpus=0 if kind == "rank_kill" else 1))
    cfg["trainer"].update(max_steps=steps, max_epochs=1000)
    if kind == "rank_kill":  # two real Lightning ranks on the CPU, one process group over gloo
        cfg["trainer"].update(_ddp_on_cpu())
    if kind == "nan":
        cfg["supervision"]["divergence"] = _divergence(nan_persistent)
    cfg["checkpoint"].update(every_n_train_steps=5, save_top_k=-1)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, steps, trigger


def _ddp_on_cpu() -> dict[str, Any]:
    # CPU ranks take no GPU (supervision.gpus 0): the simulated GPUs stay for the GPU faults
    return {"accelerator": "cpu", "devices": RANKS, "strategy": "ddp"}


def _signal(pid: int | None, sig: int) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_trainer(pid: int | None) -> bool:
    return _signal(pid, signal.SIGKILL)


def kill_rank(attempt_dir: Path, rng: Random) -> int | None:
    """SIGKILL one rank of a multi-rank attempt, drawn at random; returns the rank (None: not all ranks up yet).

    The pids come from the attempt monitor's ``monitor.json`` (the ranks it started).
    """
    start = read_monitor_start(AttemptLayout(attempt_dir).monitor_start)
    if start is None or start.world_size < 2 or len(start.ranks) < start.world_size:
        return None
    rank = rng.randrange(start.world_size)
    return rank if _signal(start.pids().get(rank), signal.SIGKILL) else None


def corrupt_newest(job_dir: Path, pid: int | None) -> str | None:
    """Freeze the trainer, break its newest checkpoint (same size, bad bytes), kill it. Returns the path."""
    if not _signal(pid, signal.SIGSTOP):
        return None
    saves = live_saves(manifest_lines(job_dir / "checkpoints" / "manifest.jsonl"))
    entries = [save for save in newest_first(saves) if os.path.exists(save["path"])]
    broken = None
    if entries:
        path = Path(entries[0]["path"])
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        for i in range(middle, min(middle + 64, len(data))):
            data[i] ^= 0xFF
        with open(path, "r+b") as f:  # in place: same inode, same size, as a bad disk block would leave it
            f.write(data)
        broken = str(path)
    _signal(pid, signal.SIGKILL)
    return broken


def mount_supported() -> str | None:
    """None when a tmpfs can be mounted here, else why not (the disk_full kind is then skipped)."""
    probe = Path(tempfile.mkdtemp(prefix="chaos-mount-"))
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                              capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            return f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root"
        subprocess.run(["umount", str(probe)], capture_output=True, timeout=10)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot mount a tmpfs here ({exc})"
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def fill_checkpoint_dir(job_dir: Path, pid: int | None) -> Path | None:
    """Make the checkpoint dir a full tmpfs under the running trainer. Returns the ballast file to delete."""
    ckpt = job_dir / "checkpoints"
    if not _signal(pid, signal.SIGSTOP):
        return None
    try:
        stash = Path(tempfile.mkdtemp(prefix="chaos-ckpt-"))
        shutil.copytree(ckpt, stash / "c", symlinks=True)
        used = sum(f.stat().st_size for f in (stash / "c").rglob("*") if f.is_file())
        # room for the files (a page each) and 16 MiB that the ballast takes and gives back later
        size_kib = used // 1024 + 4 * sum(1 for _ in (stash / "c").rglob("*")) + 16 * 1024
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(ckpt)], check=True,
                       capture_output=True, timeout=10)
        shutil.copytree(stash / "c", ckpt, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(stash, ignore_errors=True)
        ballast = ckpt / ".chaos-ballast"
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for chunk in (65536, 4096, 1):  # to the last byte
                try:
                    while os.write(fd, b"\0" * chunk):
                        pass
                except OSError:
                    pass  # ENOSPC: the disk is full, as wanted
        finally:
            os.close(fd)
        return ballast
    finally:
        _signal(pid, signal.SIGCONT)


def unmount_checkpoint_dir(job_dir: Path) -> None:
    """Undo ``fill_checkpoint_dir`` (lazy: nothing may hold the tmpfs open by then, but do not hang)."""
    subprocess.run(["umount", "-l", str(job_dir / "checkpoints")], capture_output=True, timeout=10)
