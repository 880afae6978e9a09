"""The hook of the generic HTTP alert channel: alerts POSTed as JSON to a webhook."""

from __future__ import annotations

import json
from typing import Any

from airloop_airflow.hooks.http_service import HttpServiceHook


class AlertWebhookHook(HttpServiceHook):
    """The webhook behind ``http_conn_id``: ``host`` holding the full URL, or ``schema`` (default
    ``https``), ``host``, ``port`` and the extra's ``endpoint``; a password is sent as a bearer token.

    :param conn_id: the Airflow connection (``alerts.http_conn_id`` of a model's config)
    """

    conn_name_attr = "http_conn_id"
    default_conn_name = "airloop_alerts_http"
    hook_name = "airloop alert webhook"
    default_scheme = "https"
    default_timeout = 10.0  # an alert must not hold up the failure callback

    def send(self, alert: dict[str, Any]) -> None:
        """POST ``alert`` as JSON (values JSON cannot hold, such as timestamps, as text)."""
        body = json.dumps(alert, default=str).encode()
        self.http_client().post(data=body, headers={"Content-Type": "application/json"})
