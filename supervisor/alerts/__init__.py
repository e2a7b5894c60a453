"""Alerts: supervision events delivered to the daemon log, ``alerts.jsonl``, W&B and a webhook.

The daemon builds an alert with ``make_alert`` and hands it to one long-lived
``AlertDispatcher`` (``send`` never blocks and never raises). W&B delivery runs
in a subprocess (``supervisor.alerts.wandb_worker``): nothing imported from this
package imports wandb.
"""

from supervisor.alerts.dispatcher import AlertDispatcher
from supervisor.alerts.model import (
    ALERT_RUN_SUFFIX,
    LEVELS,
    Alert,
    WandbTarget,
    alert_for_job,
    enabled_alert_events,
    make_alert,
    wandb_target_from_config,
)
from supervisor.alerts.store import alerts_path, read_alerts
from supervisor.alerts.webhook import WebhookError, post_webhook

__all__ = [
    "ALERT_RUN_SUFFIX",
    "LEVELS",
    "Alert",
    "AlertDispatcher",
    "WandbTarget",
    "WebhookError",
    "alert_for_job",
    "alerts_path",
    "enabled_alert_events",
    "make_alert",
    "post_webhook",
    "read_alerts",
    "wandb_target_from_config",
]
