"""The dispatcher records an alert id once: re-sending an outbox alert after a daemon crash adds no record."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from supervisor.alerts import AlertDispatcher, make_alert, read_alerts
from supervisor.jobfiles.atomic import read_json_lines

LOGGER = "tests.alerts.dedup"


def test_an_alert_id_already_recorded_is_not_recorded_again_by_a_later_dispatcher(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    alert = make_alert("restart", job_id="j", job_name="digits", wandb=None, details={"attempt": 2},
                       alert_id="j-event-7")
    AlertDispatcher(state, log=logging.getLogger(LOGGER)).send(alert)  # the daemon that died before "marked sent"
    later = AlertDispatcher(state, log=logging.getLogger(LOGGER))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        later.send(alert)
        later.send(make_alert("completed", job_id="j", job_name="digits", wandb=None, details={},
                              alert_id="j-event-9"))
    lines = [line for line in read_json_lines(state / "alerts.jsonl") if line.get("kind") == "alert"]
    assert [line["alert_id"] for line in lines] == ["j-event-7", "j-event-9"]
    assert any("j-event-7" in r.getMessage() and "already recorded" in r.getMessage() for r in caplog.records)


def test_a_recorded_alert_whose_delivery_never_happened_is_delivered_once_without_a_second_record(
        tmp_path: Path, webhook_server) -> None:
    state = tmp_path / "state"
    alert = make_alert("restart", job_id="j", job_name="digits", wandb=None, details={"attempt": 2},
                       alert_id="j-event-3")
    dead = AlertDispatcher(state, webhook_url=webhook_server.url)
    dead.send(alert)  # recorded; its threads never ran (killed): the webhook delivery is pending
    assert read_alerts(state)[0]["status"] == "pending"

    later = AlertDispatcher(state, webhook_url=webhook_server.url)
    later.start()
    later.send(alert)
    later.send(alert)  # and a third send in the same life does nothing at all
    assert later.flush(30)
    later.stop()
    assert len(webhook_server.received()) == 1
    (recorded,) = read_alerts(state)
    assert (recorded["alert_id"], recorded["status"]) == ("j-event-3", "delivered")
