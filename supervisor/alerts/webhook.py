"""Post an alert to a Slack-compatible incoming webhook (JSON ``{"text": ...}``), urllib only.

Slack, Mattermost, Rocket.Chat and Teams' Slack-compatible endpoints all read
``text``; ``*bold*`` is Slack's markdown for the title.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from supervisor.alerts.model import Alert

_LEVEL_MARK = {"INFO": ":information_source:", "WARN": ":warning:", "ERROR": ":rotating_light:"}


class WebhookError(Exception):
    """A webhook POST failed. ``retriable`` says whether trying again can help."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


def webhook_body(alert: Alert) -> dict[str, str]:
    """The JSON body posted for ``alert``: one Slack message with the title in bold, then the text."""
    mark = _LEVEL_MARK.get(alert.level, "")
    return {"text": f"{mark} [{alert.level}] *{alert.title}*\n{alert.text}".strip()}


def post_webhook(url: str, alert: Alert, timeout_s: float) -> None:
    """POST ``alert`` to ``url``; return on a 2xx answer, else raise ``WebhookError``.

    Server errors (5xx), 429 and network failures are retriable; other 4xx
    answers and a URL that is not http(s) are not.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        # urllib would also open file:// and ftp:// URLs: a webhook is only ever HTTP.
        raise WebhookError(f"webhook URL must be http(s), got {scheme or 'no'} scheme", retriable=False)
    data = json.dumps(webhook_body(alert)).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json; charset=utf-8"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read(4096)  # drain a little so keep-alive servers are not cut mid-answer
    except urllib.error.HTTPError as exc:
        retriable = exc.code >= 500 or exc.code == 429
        raise WebhookError(f"webhook answered HTTP {exc.code} {exc.reason}", retriable=retriable) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WebhookError(f"webhook unreachable: {reason}", retriable=True) from None
    except ValueError as exc:  # a malformed URL: no retry will fix it
        raise WebhookError(f"bad webhook URL: {exc}", retriable=False) from None
