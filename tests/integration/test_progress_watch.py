"""Progress for real: a daemon driving the fake trainer, its ``status --json`` progress through a SIGKILL,
the status table's bar, and ``supervisorctl watch`` both in a real terminal (tmux: the screen as a person sees
it) and in a pipe (plain lines)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.layout import JobLayout
from tests.support.harness import DaemonProc, fake_env, wait_for

pytestmark = pytest.mark.e2e

STEPS = 200


def progress_config(directory: Path, name: str, **init_args: Any) -> Path:
    """A fake-trainer job whose Lightning target is ``trainer.max_steps`` (the fake trains ``steps``)."""
    cfg = {
        "name": name,
        "model": {"class_path": "fake.Model",
                  "init_args": {"steps": STEPS, "step_time": 0.05, "ckpt_every": 20, **init_args}},
        "data": {"class_path": "fake.Data"},
        "trainer": {"max_steps": STEPS},
        "logger": {"wandb": {"mode": "disabled"}},
        "supervision": {"backoff": {"initial": "1s", "max": "2s"}, "stop_grace": "5s", "budget": "1h"},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def saved_step(job_dir: str, path: str, before_attempt: int) -> int:
    """The step ``path`` held when attempt ``before_attempt`` started (the manifest's newest save of it before)."""
    saves = [e for e in read_json_lines(JobLayout(Path(job_dir)).manifest)
             if e.get("event") == "save" and e["path"] == path and e["attempt"] < before_attempt]
    return int(saves[-1]["step"])


def test_status_progress_grows_and_counts_what_a_kill_cost(daemon: DaemonProc) -> None:
    job = daemon.submit(progress_config(daemon.workdir, "prog"))
    # the plain view in a pipe, from the start to the end of the job
    watch = subprocess.Popen(f"{shlex.quote(daemon.python)} -m supervisor.cli.ctl watch {job} --interval 0.3 | cat",
                             shell=True, env=daemon.env, cwd=daemon.workdir, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        first = wait_for(lambda: _progress_past(daemon, job, 20), timeout=60, what="step 20")
        second = wait_for(lambda: _progress_past(daemon, job, first["step"] + 15), timeout=60, what="more steps")
        for p in (first, second):
            assert p["target_step"] == STEPS and p["target_from"] == "max_steps"
            assert p["percent"] == pytest.approx(100 * p["step"] / STEPS, abs=0.1)
            assert 2 < p["steps_per_s"] < 30  # 0.05 s a step: 20 it/s on an idle box, slower on a loaded one
            assert 0 < p["eta_s"] < 3600 and p["ends_by"] == "target"
            assert p["lost_s"] == 0 and p["restarts"] == []
        assert second["percent"] > first["percent"] and second["eta_s"] < first["eta_s"]

        table = daemon.ctl("status").stdout
        row = next(line for line in table.splitlines() if line.split()[:1] == [job])
        assert "█" in row and "░" in row and "it/s" in row and "ETA" in row

        # SIGKILL the trainer between two checkpoints: the steps since the resume checkpoint are made again
        wait_for(lambda: daemon.status(job)["global_step"] % 20 >= 8, timeout=60, interval=0.01, what="mid-way")
        os.kill(daemon.status(job)["attempts"][0]["pid"], signal.SIGKILL)
        status = wait_for(lambda: _second_attempt_training(daemon, job), timeout=60, what="attempt 2 training")
        p = status["progress"]
        reached, resumed = p["restarts"][0]["reached_step"], p["restarts"][0]["resumed_step"]
        assert p["restarts"][0]["attempt"] == 2 and p["restarts"][0]["after"] == "crash"
        assert resumed == saved_step(status["job_dir"], status["attempts"][1]["resumed_from"], 2)
        assert reached > resumed  # killed past its newest checkpoint
        assert p["recomputed_steps"] == reached - resumed
        assert p["lost_s"] > 0 and p["downtime_s"] >= 0 and 0 < p["lost_share"] < 1
        assert p["lost_s"] >= p["downtime_s"] + 0.5 * (reached - resumed) * 0.05  # the steps, at >= 1/2 their pace
        assert p["eta_s"] is not None and p["ends_by"] == "target"

        done = daemon.wait_state(job, "completed", timeout=120)
        assert done["progress"]["percent"] == 100.0 and done["progress"]["eta_s"] is None
        assert done["progress"]["lost_s"] >= p["lost_s"] - 0.01
        out, err = watch.communicate(timeout=60)  # the plain view ends with the job
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0, err
    assert "\x1b" not in out and "█" not in out  # plain: no escape sequences, no bar
    lines = out.splitlines()
    status_lines = [line.split() for line in lines if line.split()[2:3] == [job] and line.split()[3] != "event"]
    steps = [int(cells[5].split("/")[0]) for cells in status_lines]  # date, time, job, state, "step", N/200
    assert len(steps) >= 5 and steps[-1] == STEPS
    assert any(f"{job} event restart:" in line for line in lines)
    assert any(" restarts 1 lost " in line for line in lines)
    assert f"{job} completed step {STEPS}/{STEPS} 100%" in lines[-1]


def _progress_past(daemon: DaemonProc, job: str, step: int) -> dict[str, Any] | None:
    status = daemon.status(job)
    p = status["progress"]
    return p if status["state"] == "running" and p["step"] >= step and p["steps_per_s"] else None


def _second_attempt_training(daemon: DaemonProc, job: str) -> dict[str, Any] | None:
    status = daemon.status(job)
    attempts = status["attempts"]
    ok = len(attempts) >= 2 and attempts[1]["ended_at"] is None and status["progress"]["restarts"] \
        and status["progress"]["step"] > (status["progress"]["restarts"][0]["resumed_step"] or 0) + 3
    return status if ok else None


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is missing (apt-get install -y tmux)")
def test_watch_in_a_real_terminal_shows_the_bar_advance_and_the_restart(daemon: DaemonProc, tmp_path: Path) -> None:
    sock = str(Path("/tmp") / f"watch-{os.getpid()}-{time.monotonic_ns()}.tmux")  # a server of this test's own

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-S", sock, *args], env=daemon.env, capture_output=True, text=True,
                              timeout=30).stdout

    def screen() -> str:
        return tmux("capture-pane", "-p")

    job = daemon.submit(progress_config(daemon.workdir, "tty", die_at=120))
    tmux("new-session", "-d", "-x", "170", "-y", "20", "bash --norc --noprofile")
    try:
        tmux("send-keys", "echo BEFORE-WATCH", "Enter")
        tmux("send-keys", f"cd {daemon.workdir} && {sys.executable} -m supervisor.cli.ctl watch {job}"
             " --interval 0.3; echo WATCH-EXIT=$?", "Enter")

        def row(text: str | None = None) -> list[str] | None:
            line = next((ln for ln in (text or screen()).splitlines() if ln.startswith(job)), None)
            return line.split() if line else None

        def percent(cells: list[str]) -> int:
            return next((int(c.rstrip("%")) for c in cells if c.endswith("%") and c[:-1].isdigit()), -1)

        seen = wait_for(lambda: (r := row()) and r[1] == "running" and percent(r) >= 15 and r, timeout=60,
                        what="the job's bar on the screen")
        header = screen().splitlines()[0]
        assert header.startswith(f"ml-supervisor watch  {job}") and "Ctrl-C to quit" in header
        assert any(c.startswith("█") for c in seen) and "it/s" in seen, seen
        later = wait_for(lambda: (r := row()) and percent(r) >= percent(seen) + 15 and r, timeout=60,
                         what="the bar to advance")
        assert later[later.index("it/s") - 1].replace(".", "").isdigit()
        # the fake SIGKILLs itself at step 120: the restart shows in RESTARTS and LOST
        restarted = wait_for(lambda: (r := row(s := screen())) and r[1] == "running" and _restarts(s, job) == "1"
                             and r, timeout=60, what="the restart on the screen")
        assert "%)" in " ".join(restarted)  # LOST: a duration and its share of the run
        wait_for(lambda: (r := row()) and r[1] == "completed", timeout=60, what="completed on the screen")
        assert "100%" in (row() or [])
        tmux("send-keys", "C-c")
        after = wait_for(lambda: re.search(r"WATCH-EXIT=\d", s := screen()) and s, timeout=30, what="watch to exit")
        # the alternate screen is gone: the shell's own lines, as they were before watch started
        assert "WATCH-EXIT=0" in after and "BEFORE-WATCH" in after
        assert "ml-supervisor watch" not in after and "█" not in after
    finally:
        tmux("kill-server")
        Path(sock).unlink(missing_ok=True)


def _restarts(text: str, job: str) -> str | None:
    """The RESTARTS cell of ``job``'s row, found under its header."""
    lines = text.splitlines()
    header = next((ln for ln in lines if ln.startswith("JOB ")), None)
    line = next((ln for ln in lines if ln.startswith(job)), None)
    if header is None or line is None:
        return None
    at = header.index("RESTARTS") + len("RESTARTS")
    return line[:at].split()[-1]


def test_watch_shows_the_gpu_each_job_holds_as_nvml_reads_it(tmp_path: Path) -> None:
    nvml = tmp_path / "nvml.json"  # the simulated NVML (supervisor/gpu/simulated.py), read as real NVML is
    gpus = [{"index": i, "uuid": f"GPU-fake-{i}", "name": "Fake H100", "memory_total_mib": 81559,
             "memory_used_mib": used, "temperature_c": temp, "ecc_uncorrected": 0, "retired_pages_pending": False,
             "lost": False, "xid": []} for i, (used, temp) in enumerate([(40213, 71), (1210, 46)])]
    nvml.write_text(json.dumps({"gpus": gpus}))
    (tmp_path / "work").mkdir()
    state = tmp_path / "state"
    d = DaemonProc(state, tmp_path / "work", fake_env(state, ML_SUPERVISOR_NVML=f"fake:{nvml}"))
    d.start("gpu.poll_interval=0.2")
    try:
        cfg = yaml.safe_load(progress_config(d.workdir, "gpu").read_text())
        cfg["supervision"]["gpus"] = 1
        cfg["model"]["init_args"]["steps"] = cfg["trainer"]["max_steps"] = 60
        (d.workdir / "gpu.yaml").write_text(yaml.safe_dump(cfg))
        job = d.submit(d.workdir / "gpu.yaml")
        held = wait_for(lambda: (a := d.status(job)["attempts"]) and a[-1]["gpus"], timeout=60, what="a GPU")
        out = d.ctl("watch", job, "--interval", "0.3").stdout  # plain lines (a pipe), until the job ends
    finally:
        d.kill()
        d.kill_leftovers()
    used, temp = {0: (40213, 71), 1: (1210, 46)}[held[0]]
    reading = f"gpu {held[0]}: {used / 1024:.1f}/80G {temp}C"
    running = [line for line in out.splitlines() if f"{job} running step" in line]
    assert running and all(line.endswith(reading) for line in running), out
