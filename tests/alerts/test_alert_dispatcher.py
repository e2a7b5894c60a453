"""AlertDispatcher against real W&B offline runs, a real webhook server and real broken installs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.alerts import AlertDispatcher, WandbTarget, make_alert, read_alerts
from tests.alerts.wandb_offline_log import read_alerts as read_wandb_alerts
from tests.alerts.wandb_offline_log import read_run_record

# Our own logger: the daemon's "ml_supervisor" tree may have propagate=False once
# another test has set up the daemon's logging, and caplog listens at the root.
LOGGER = "tests.alerts.dispatcher"


def _dispatcher(state: Path, **options: Any) -> AlertDispatcher:
    return AlertDispatcher(state, log=logging.getLogger(LOGGER), **options)


def _target(tmp_path: Path, run_id: str, *, group: str = "digits", mode: str = "offline") -> WandbTarget:
    return WandbTarget(project="alerts-test", entity=None, group=group, run_id=run_id,
                       dir=str(tmp_path / "jobs" / run_id / "wandb"), mode=mode)


def _offline_run_files(target: WandbTarget) -> list[Path]:
    """The offline run files of the target's alert run (one per worker batch)."""
    return sorted(Path(target.dir).glob(f"wandb/offline-run-*-{target.alert_run_id}*/run-{target.alert_run_id}.wandb"))


def _broken_wandb(tmp_path: Path, body: str) -> Path:
    """A directory that, first on PYTHONPATH, shadows wandb with a broken package."""
    root = tmp_path / "broken-site"
    (root / "wandb").mkdir(parents=True)
    (root / "wandb" / "__init__.py").write_text(body)
    return root


def _hanging_wandb(tmp_path: Path, pids: Path) -> Path:
    """A wandb whose import records the worker's pid in ``pids`` and then hangs (a stuck network call)."""
    return _broken_wandb(
        tmp_path,
        f"import os, time\nopen(os.path.join({str(pids)!r}, str(os.getpid())), 'w').close()\ntime.sleep(600)\n",
    )


def test_alerts_of_two_jobs_land_in_their_offline_runs_in_one_worker_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Job "digits" is offline; job "bert" asks for online, but this machine has no
    # API key (HOME without .netrc): its alert must fall back to its offline run.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # and if anything tried the network: nothing there
    caplog.set_level(logging.INFO, logger=LOGGER)
    state = tmp_path / "state"
    digits, bert = _target(tmp_path, "r-digits"), _target(tmp_path, "r-bert", group="bert", mode="online")
    dispatcher = _dispatcher(state, batch_window_s=1.5)
    dispatcher.start()
    sent = [
        make_alert("restart", job_id="j1", job_name="digits", wandb=digits,
                   details={"cause": "exit code 1", "attempt": 2, "restarts": 1, "gpus": [0],
                            "resumed_from": "/s/jobs/j1/checkpoints/epoch=1-step=20.ckpt"}),
        make_alert("failed", job_id="j1", job_name="digits", wandb=digits,
                   details={"reason": "max_restarts (1 in 1h) reached", "attempts": 2, "restarts": 1}),
        make_alert("completed", job_id="j2", job_name="bert", wandb=bert, details={"elapsed_s": 75}),
    ]
    for alert in sent:
        dispatcher.send(alert)
    assert dispatcher.flush(120), "alerts not delivered in time"
    dispatcher.stop()

    # Local record: every alert, with its W&B delivery.
    kept = {a["alert_id"]: a for a in read_alerts(state)}
    assert set(kept) == {a.alert_id for a in sent}
    for alert in sent:
        entry = kept[alert.alert_id]
        assert entry["status"] == "delivered"
        assert entry["deliveries"]["wandb"]["status"] == "offline"
        assert entry["deliveries"]["wandb"]["attempts"] == 1
    assert "No API key" in kept[sent[2].alert_id]["deliveries"]["wandb"]["note"]

    # The offline run files, read back: one run per job, both from ONE worker run.
    digits_files, bert_files = _offline_run_files(digits), _offline_run_files(bert)
    assert len(digits_files) == 1 and len(bert_files) == 1
    in_wandb = read_wandb_alerts(digits_files[0])
    assert [(a["title"], a["level"]) for a in in_wandb] == [("digits: restarted", "WARN"),
                                                            ("digits: failed, gave up", "ERROR")]
    assert in_wandb[0]["text"] == sent[0].text
    assert "Resumed from: /s/jobs/j1/checkpoints/epoch=1-step=20.ckpt" in in_wandb[0]["text"]
    assert in_wandb[0]["wait_duration_ms"] == 300_000
    assert [(a["title"], a["level"], a["text"]) for a in read_wandb_alerts(bert_files[0])] == [
        ("bert: completed", "INFO", sent[2].text)]
    run = read_run_record(digits_files[0])
    assert (run.run_id, run.project, run.run_group, run.job_type) == ("r-digits-supervisor", "alerts-test",
                                                                  "digits", "supervisor")
    assert run.display_name == "digits · supervisor"

    # The daemon log has every alert, at its level.
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert any(lvl == logging.WARNING and "digits: restarted" in msg for lvl, msg in logged)
    assert any(lvl == logging.ERROR and "digits: failed, gave up" in msg for lvl, msg in logged)
    assert any(lvl == logging.INFO and "bert: completed" in msg for lvl, msg in logged)


def test_each_batch_resumes_the_same_alert_run(tmp_path: Path) -> None:
    target = _target(tmp_path, "r-loop")
    dispatcher = _dispatcher(tmp_path / "state", batch_window_s=0)
    dispatcher.start()
    for attempt in (2, 3):
        dispatcher.send(make_alert("restart", job_id="j", job_name="loop", wandb=target, details={"attempt": attempt}))
        assert dispatcher.flush(120)
    dispatcher.stop()
    files = _offline_run_files(target)
    assert len(files) == 2  # one offline segment per batch, all with the same run id: `wandb sync` joins them
    texts = [read_wandb_alerts(f)[0]["text"].splitlines()[0] for f in files]
    assert sorted(texts) == ["Attempt 1 ended (cause unknown); relaunched as attempt 2.",
                             "Attempt 2 ended (cause unknown); relaunched as attempt 3."]
    assert {read_run_record(f).run_id for f in files} == {"r-loop-supervisor"}


def test_online_run_without_network_falls_back_to_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A key but no reachable server (a closed local port; nothing leaves this machine):
    # wandb.init times out, and the alert is written offline for a later `wandb sync`.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    target = _target(tmp_path, "r-net", mode="online")
    dispatcher = _dispatcher(tmp_path / "state", online_init_timeout_s=2, batch_window_s=0)
    dispatcher.start()
    alert = make_alert("hang", job_id="j", job_name="net", wandb=target, details={"silent_s": 700})
    dispatcher.send(alert)
    assert dispatcher.flush(60)
    dispatcher.stop()
    delivery = read_alerts(tmp_path / "state")[0]["deliveries"]["wandb"]
    assert delivery["status"] == "offline", delivery
    assert "online init failed" in delivery["note"]
    files = _offline_run_files(target)
    assert [a["title"] for a in read_wandb_alerts(files[0])] == ["net: hung"]


def test_broken_wandb_install_is_logged_kept_locally_and_the_threads_live_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, webhook_server
) -> None:
    broken = _broken_wandb(tmp_path, 'raise ImportError("simulated broken wandb install")\n')
    state = tmp_path / "state"
    dispatcher = _dispatcher(state, webhook_url=webhook_server.url, worker_env={"PYTHONPATH": str(broken)},
                                 batch_window_s=0, retry_delay_s=0.01)
    dispatcher.start()
    first = make_alert("gpu_fault", job_id="j", job_name="vit", wandb=_target(tmp_path, "r-vit"),
                       details={"gpu": 2, "fault": "Xid 48: double-bit ECC error", "quarantined": True})
    dispatcher.send(first)
    assert dispatcher.flush(60)
    assert dispatcher.healthy()

    entry = read_alerts(state)[0]
    assert entry["status"] == "failed"
    assert entry["deliveries"]["wandb"]["status"] == "failed"
    assert "import wandb failed" in entry["deliveries"]["wandb"]["error"]
    assert "simulated broken wandb install" in entry["deliveries"]["wandb"]["error"]
    assert entry["deliveries"]["wandb"]["attempts"] == 1  # an import error is not retried
    assert entry["deliveries"]["webhook"]["status"] == "delivered"  # the other channel is unaffected
    assert entry["text"] == first.text
    assert any(r.levelno == logging.ERROR and "not delivered to W&B" in r.getMessage() for r in caplog.records)

    # Still serving: the next alert goes through the same threads.
    second = make_alert("completed", job_id="j", job_name="vit", wandb=None, details={})
    dispatcher.send(second)
    assert dispatcher.flush(30)
    dispatcher.stop()
    assert [b["text"].split("\n")[0] for b in webhook_server.received()] == [
        ":rotating_light: [ERROR] *vit: GPU fault*", ":information_source: [INFO] *vit: completed*"]


def test_worker_with_a_python_that_does_not_exist_fails_cleanly(tmp_path: Path) -> None:
    dispatcher = _dispatcher(tmp_path / "state", python=str(tmp_path / "no-such-python"), batch_window_s=0)
    dispatcher.start()
    dispatcher.send(make_alert("budget", job_id="j", job_name="n", wandb=_target(tmp_path, "r"), details={}))
    assert dispatcher.flush(30)
    assert dispatcher.healthy()
    dispatcher.stop()
    delivery = read_alerts(tmp_path / "state")[0]["deliveries"]["wandb"]
    assert delivery["status"] == "failed" and "cannot start the wandb worker" in delivery["error"]


def test_hung_worker_is_killed_at_its_timeout_and_retried(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    broken = _hanging_wandb(tmp_path, pids)
    state = tmp_path / "state"
    dispatcher = _dispatcher(state, worker_env={"PYTHONPATH": str(broken)}, timeout_s=3, retries=1,
                                 retry_delay_s=0.05, batch_window_s=0)
    dispatcher.start()
    dispatcher.send(make_alert("hang", job_id="j", job_name="n", wandb=_target(tmp_path, "r"), details={}))
    assert not dispatcher.flush(0.5)  # still in its first try
    assert dispatcher.flush(30)
    dispatcher.stop()
    delivery = read_alerts(state)[0]["deliveries"]["wandb"]
    assert delivery["status"] == "failed"
    assert delivery["attempts"] == 2
    assert "timed out after 3s" in delivery["error"]
    started = [int(p.name) for p in pids.iterdir()]
    assert len(started) == 2
    for pid in started:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_stop_kills_a_running_worker_and_returns(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    broken = _hanging_wandb(tmp_path, pids)
    dispatcher = _dispatcher(tmp_path / "state", worker_env={"PYTHONPATH": str(broken)}, timeout_s=300,
                                 batch_window_s=0)
    dispatcher.start()
    dispatcher.send(make_alert("hang", job_id="j", job_name="n", wandb=_target(tmp_path, "r"), details={}))
    deadline = time.monotonic() + 30
    while not any(pids.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    (pid_file,) = pids.iterdir()
    started = time.monotonic()
    dispatcher.stop(timeout_s=0.2)
    assert time.monotonic() - started < 60  # the worker was killed, not waited for (its timeout is 300 s)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.name), 0)
    assert not dispatcher.healthy()
    delivery = read_alerts(tmp_path / "state")[0]["deliveries"]["wandb"]
    assert delivery["status"] in ("failed", "pending")


def test_full_queue_drops_with_a_log_line_and_send_returns_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    dispatcher = _dispatcher(state, queue_size=2)  # not started yet: nothing drains the queue
    alerts = [make_alert("restart", job_id="j", job_name="n", wandb=None, details={"attempt": n}) for n in (2, 3, 4)]
    durations = []
    for alert in alerts:
        started = time.monotonic()
        dispatcher.send(alert)
        durations.append(time.monotonic() - started)
    assert max(durations) < 0.5
    assert any("alert queue full" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    dispatcher.start()
    assert dispatcher.flush(10)
    dispatcher.stop()
    kept = read_alerts(state)
    # every alert is recorded as it is sent, the dropped one too (it had no channel to be dropped from)
    assert [a["alert_id"] for a in kept] == [a.alert_id for a in alerts]
    assert {a["status"] for a in kept} == {"logged"}  # no W&B target, no webhook: the log and this file


def test_webhook_gets_title_and_text_and_a_crash_loop_is_throttled(tmp_path: Path, webhook_server) -> None:
    state = tmp_path / "state"
    dispatcher = _dispatcher(state, webhook_url=webhook_server.url, wait_duration_s=300)
    dispatcher.start()
    first = make_alert("restart", job_id="j", job_name="digits", wandb=None, details={"attempt": 2, "cause": "SIGSEGV"})
    second = make_alert("restart", job_id="j", job_name="digits", wandb=None, details={"attempt": 3})
    other = make_alert("completed", job_id="j", job_name="digits", wandb=None, details={})
    for alert in (first, second, other):
        dispatcher.send(alert)
    assert dispatcher.flush(30)
    dispatcher.stop()
    bodies = webhook_server.received()
    assert len(bodies) == 2
    assert set(bodies[0]) == {"text"}
    assert bodies[0]["text"] == f":warning: [WARN] *digits: restarted*\n{first.text}"
    assert "Attempt 1 ended (SIGSEGV); relaunched as attempt 2." in bodies[0]["text"]
    assert "*digits: completed*" in bodies[1]["text"]
    statuses = {a["alert_id"]: a["deliveries"]["webhook"]["status"] for a in read_alerts(state)}
    assert statuses == {first.alert_id: "delivered", second.alert_id: "throttled", other.alert_id: "delivered"}


def test_webhook_500_is_retried_then_logged(tmp_path: Path, webhook_server, caplog: pytest.LogCaptureFixture) -> None:
    webhook_server.status = 500
    state = tmp_path / "state"
    dispatcher = _dispatcher(state, webhook_url=webhook_server.url, retries=2, retry_delay_s=0.05)
    dispatcher.start()
    dispatcher.send(make_alert("failed", job_id="j", job_name="n", wandb=None, details={"reason": "no progress"}))
    assert dispatcher.flush(30)
    dispatcher.stop()
    assert len(webhook_server.received()) == 3
    delivery = read_alerts(state)[0]["deliveries"]["webhook"]
    assert (delivery["status"], delivery["attempts"]) == ("failed", 3)
    assert delivery["error"] == "webhook answered HTTP 500 Internal Server Error"
    assert any(r.levelno == logging.ERROR and "not delivered to the webhook after 3 tries" in r.getMessage()
               for r in caplog.records)


def test_send_after_stop_only_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dispatcher = _dispatcher(tmp_path / "state")
    dispatcher.start()
    dispatcher.stop()
    dispatcher.send(make_alert("stopped", job_id="j", job_name="n", wandb=None, details={"by": "bob"}))
    assert any("dispatcher stopped" in r.getMessage() and "Stopped on request by bob" in r.getMessage()
               for r in caplog.records)
    assert read_alerts(tmp_path / "state") == []


def test_the_daemon_side_of_alerts_and_systemd_never_imports_wandb() -> None:
    code = (
        "import sys\n"
        "import supervisor.alerts, supervisor.alerts.dispatcher, supervisor.sdnotify, supervisor.systemd_unit\n"
        "assert 'wandb' not in sys.modules, sorted(m for m in sys.modules if m.startswith('wandb'))\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
