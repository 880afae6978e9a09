"""Serving targets: where a model's canary runs (``deployment.target`` in its config)."""

from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING, Any

from airloop_airflow.targets.kserve import KServeTarget
from airloop_airflow.targets.local import LocalServerTarget, _http

if TYPE_CHECKING:
    from airloop.config import PipelineConfig


def build_target(cfg: PipelineConfig) -> LocalServerTarget | KServeTarget:
    """The serving target of a model's config, built from its Airflow connections."""
    from airflow.sdk import BaseHook

    d = cfg.deployment
    if d.target == "local":
        conn = BaseHook.get_connection(cfg.model_server_conn_id)
        return LocalServerTarget(f"{conn.schema or 'http'}://{conn.host}:{conn.port}")
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes.client import CustomObjectsApi
    from mlflow import MlflowClient

    prom = BaseHook.get_connection(d.prometheus_conn_id)
    prom_url = f"{prom.schema or 'http'}://{prom.host}:{prom.port or 9090}"

    def prom_query(q: str) -> list[dict[str, Any]]:
        body = json.loads(_http("GET", f"{prom_url}/api/v1/query?{urllib.parse.urlencode({'query': q})}"))
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus query failed: {body}")
        return body["data"]["result"]

    api = CustomObjectsApi(KubernetesHook(conn_id=d.kubernetes_conn_id).get_conn())
    return KServeTarget(cfg, api, prom_query, lambda v: MlflowClient().get_model_version_download_uri(cfg.name, v))
