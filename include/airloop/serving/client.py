"""The client of an airloop model server (``airloop.serving.server``): scoring, admin and metrics routes.

Built on :class:`airloop.http.HttpClient`, so it owns its base URL, timeout and retries. Airflow-free: the
deploy DAG's hook (``operators/hooks/model_server.py``), the traffic replay and a variant served by another
endpoint all use it.
"""

from __future__ import annotations

import json
from typing import Any

from airloop.http import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, HttpClient, HttpError


class ModelServerClient:
    """Calls to one model server.

    :param base_url: scheme, host and port, e.g. ``http://127.0.0.1:8090``
    :param timeout: seconds for one attempt
    :param retries: attempts after the first, for a refused connection, a timeout or a 502/503/504
    :param token: the server's admin token, sent as ``Authorization: Bearer`` on the admin routes only
        (scoring and the read-only routes are open); without it they answer 401
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        *,
        token: str | None = None,
    ) -> None:
        self.http = HttpClient(base_url.rstrip("/"), timeout=timeout, retries=retries)
        self._admin_headers = {"Authorization": f"Bearer {token}"} if token else {}

    def __repr__(self) -> str:  # never the token
        return f"ModelServerClient({self.base_url!r}, token={'***' if self._admin_headers else None})"

    @property
    def base_url(self) -> str:
        return self.http.base_url

    def invocations(
        self, frame_or_payload: Any, *, request_key: str | None = None, event_time: str | None = None
    ) -> dict[str, Any]:
        """Score ``frame_or_payload``: a DataFrame (sent as ``dataframe_split``), a JSON-able payload, or a
        JSON body already encoded as bytes. Returns the server's answer; a non-2xx raises :class:`HttpError`.

        :param request_key: the sticky ``X-Request-Key`` (the same key always meets the same variant)
        :param event_time: the ``X-Event-Time`` (ISO 8601) the prediction log is partitioned by
        """
        headers = {"Content-Type": "application/json"}
        if request_key:
            headers["X-Request-Key"] = request_key
        if event_time:
            headers["X-Event-Time"] = event_time
        answer: dict[str, Any] = self.http.post("/invocations", data=_body(frame_or_payload), headers=headers).json()
        return answer

    def reload(self) -> dict[str, Any]:
        """Load the registry's current ``@champion`` / ``@challenger``; returns what the server now serves."""
        info: dict[str, Any] = self.http.post("/admin/reload", headers=self._admin_headers).json()
        return info

    def set_weight(self, weight: float) -> dict[str, Any]:
        """Send ``weight`` (0..1) of the traffic to the challenger; returns what the server now serves."""
        info: dict[str, Any] = self.http.put(
            "/admin/weight", json_body={"weight": weight}, headers=self._admin_headers
        ).json()
        return info

    def version(self) -> dict[str, Any]:
        """The model, the challenger's weight and the version of each variant."""
        info: dict[str, Any] = self.http.get("/version").json()
        return info

    def metrics_text(self) -> str:
        """The per-variant counters and histograms, in the Prometheus text format."""
        return self.http.get("/metrics").text()

    def health(self) -> bool:
        """Whether the server answers ``GET /health`` now (one attempt, no retry)."""
        try:
            self.http.get("/health", retries=0)
        except HttpError:
            return False
        return True


def _body(frame_or_payload: Any) -> bytes:
    """The JSON request body of a DataFrame, a JSON-able payload or already encoded bytes."""
    if isinstance(frame_or_payload, bytes | bytearray):
        return bytes(frame_or_payload)
    if hasattr(frame_or_payload, "to_json"):
        split = json.loads(frame_or_payload.to_json(orient="split", index=False, date_format="iso"))
        return json.dumps({"dataframe_split": split}).encode()
    return json.dumps(frame_or_payload).encode()
