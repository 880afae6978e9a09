"""The hook of the generic HTTP alert channel: alerts POSTed as JSON to a webhook."""

from __future__ import annotations

import json
from typing import Any

from airloop_airflow.hooks.http_service import HttpServiceHook


class AlertWebhookHook(HttpServiceHook):
    """The webhook behind ``http_conn_id``: ``host`` holding the full URL, or ``schema`` (default
    ``https``), ``host``, ``port`` and the extra's ``endpoint``; a password is sent as a bearer token.

    :param http_conn_id: the Airflow connection (``alerts.http_conn_id`` of a model's config)
    :param timeout: seconds for one attempt
    :param retries: attempts after the first, for a refused connection, a timeout or a 502/503/504
    """

    conn_name_attr = "http_conn_id"
    default_conn_name = "airloop_alerts_http"
    hook_name = "airloop alert webhook"
    default_scheme = "https"

    def __init__(self, http_conn_id: str | None = None, *, timeout: float = 10.0, retries: int = 2) -> None:
        super().__init__(http_conn_id, timeout=timeout, retries=retries)

    def send(self, alert: dict[str, Any]) -> None:
        """POST ``alert`` as JSON (values JSON cannot hold, such as timestamps, as text)."""
        body = json.dumps(alert, default=str).encode()
        self.http_client().post(data=body, headers={"Content-Type": "application/json"})
