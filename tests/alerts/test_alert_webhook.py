"""post_webhook against a real local HTTP server: success, retriable and final failures."""

from __future__ import annotations

import socket

import pytest

from supervisor.alerts import WebhookError, make_alert, post_webhook

ALERT = make_alert("failed", job_id="j7", job_name="resnet", wandb=None,
                   details={"reason": "no progress in 3 attempts", "host": "n2"})


def test_post_sends_a_slack_message_with_title_and_text(webhook_server) -> None:
    post_webhook(webhook_server.url, ALERT, timeout_s=5)
    (body,) = webhook_server.received()
    assert body == {"text": f":rotating_light: [ERROR] *resnet: failed, gave up*\n{ALERT.text}"}
    assert "Gave up: no progress in 3 attempts." in body["text"]


@pytest.mark.parametrize(("status", "retriable"), [(500, True), (503, True), (429, True), (404, False), (400, False)])
def test_http_errors_say_whether_a_retry_can_help(webhook_server, status: int, retriable: bool) -> None:
    webhook_server.status = status
    with pytest.raises(WebhookError, match=f"HTTP {status}") as caught:
        post_webhook(webhook_server.url, ALERT, timeout_s=5)
    assert caught.value.retriable is retriable


def test_unreachable_server_is_retriable() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(WebhookError, match="unreachable") as caught:
        post_webhook(f"http://127.0.0.1:{port}/hook", ALERT, timeout_s=2)
    assert caught.value.retriable


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x", "not a url"])
def test_only_http_urls_are_posted(url: str) -> None:
    with pytest.raises(WebhookError) as caught:
        post_webhook(url, ALERT, timeout_s=2)
    assert not caught.value.retriable
