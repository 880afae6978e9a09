"""The hook of a Prometheus server: instant PromQL queries over its HTTP API."""

from __future__ import annotations

from typing import Any

from airloop_airflow.hooks.http_service import HttpServiceHook


class PrometheusHook(HttpServiceHook):
    """Prometheus behind ``prometheus_conn_id`` (``schema``, ``host``, ``port``; default ``http`` and 9090).

    :param conn_id: the Airflow connection
    """

    conn_name_attr = "prometheus_conn_id"
    default_conn_name = "prometheus_default"
    hook_name = "Prometheus"
    default_port = 9090

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Run an instant query; its ``data.result`` (one ``{"metric": ..., "value": [t, v]}`` per series).

        :raises RuntimeError: Prometheus answered but the query did not succeed (its error in the message)
        """
        body = self.http_client().get("/api/v1/query", params={"query": promql}, ok=(400, 422)).json()
        if not isinstance(body, dict) or body.get("status") != "success":
            raise RuntimeError(f"Prometheus query failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result
