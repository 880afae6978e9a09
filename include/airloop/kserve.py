"""The production serving target: a KServe ``InferenceService`` (serverless mode) driven through the
Kubernetes API, with its canary analysis read from Prometheus.

Pure builders only (manifests, merge patches, PromQL), so each is tested exactly without a cluster; the
deploy DAG's ``KServeTarget`` (``operators/targets/kserve.py``) sends them.

How KServe canaries work: patching the predictor's ``storageUri`` creates a new revision; with
``canaryTrafficPercent: N`` it gets N % of the traffic and the last revision that was rolled out at
100 % keeps the rest. ``canaryTrafficPercent: 100`` promotes the new revision; ``0`` pins all traffic back
on the previous one (rollback). Canary rollouts need KServe's serverless (Knative) deployment mode.

Metrics: Knative's queue-proxy exports ``revision_app_request_count`` (labels ``namespace_name``,
``revision_name``, ``response_code_class``) and ``revision_app_request_latencies_bucket`` (milliseconds)
per revision; the challenger is the InferenceService's ``latestCreatedRevision`` and the champion its
``previousRolledoutRevision`` (both in ``status.components.predictor``). The prediction distribution is
not in those metrics: on KServe the canary is judged on errors and latency (and the online metric).
"""

from __future__ import annotations

import math
from typing import Any

from airloop.canary import VariantStats
from airloop.config import PipelineConfig

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


def service_name(cfg: PipelineConfig) -> str:
    """A DNS-1035 name: the configured one, or the model name with '-' for '_'."""
    return cfg.deployment.service_name or cfg.name.replace("_", "-")


def inference_service(cfg: PipelineConfig, storage_uri: str, version: str) -> dict[str, Any]:
    """The InferenceService serving ``storage_uri`` (an MLflow model folder) at 100 %."""
    d = cfg.deployment
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": service_name(cfg),
            "namespace": d.namespace,
            "labels": {"app.kubernetes.io/part-of": "airloop", "airloop/model": cfg.name.replace("_", "-")},
            "annotations": {"serving.kserve.io/deploymentMode": "Serverless", "airloop/model-version": str(version)},
        },
        "spec": {
            "predictor": {
                "serviceAccountName": d.service_account,
                "minReplicas": d.min_replicas,
                "maxReplicas": d.max_replicas,
                "model": {
                    "modelFormat": {"name": "mlflow"},
                    "protocolVersion": "v2",
                    "storageUri": storage_uri,
                    "resources": {
                        "requests": {"cpu": d.cpu, "memory": d.memory},
                        "limits": {"cpu": d.cpu, "memory": d.memory},
                    },
                },
            }
        },
    }


def canary_patch(storage_uri: str, version: str, percent: int) -> dict[str, Any]:
    """Start a canary of a new model (a new revision) at ``percent`` of the traffic (a merge patch)."""
    return {
        "metadata": {"annotations": {"airloop/model-version": str(version)}},
        "spec": {"predictor": {"canaryTrafficPercent": int(percent), "model": {"storageUri": storage_uri}}},
    }


def traffic_patch(percent: int) -> dict[str, Any]:
    """Move the canary's share: a step (10, 25, ...), promote (100) or roll back (0)."""
    if not 0 <= percent <= 100:
        raise ValueError("percent must be within [0, 100]")
    return {"spec": {"predictor": {"canaryTrafficPercent": int(percent)}}}


def revisions(isvc: dict[str, Any]) -> dict[str, str | None]:
    """The revisions to compare, from the InferenceService's status."""
    pred = (isvc.get("status") or {}).get("components", {}).get("predictor", {})
    return {"challenger": pred.get("latestCreatedRevision"), "champion": pred.get("previousRolledoutRevision")}


def queries(namespace: str, revision: str) -> dict[str, str]:
    """PromQL for one revision's cumulative figures (summed over its pods)."""
    sel = f'namespace_name="{namespace}",revision_name="{revision}"'
    return {
        "by_code_class": f"sum by (response_code_class) (revision_app_request_count{{{sel}}})",
        "latency_ms_buckets": f"sum by (le) (revision_app_request_latencies_bucket{{{sel}}})",
    }


def stats_from_prometheus(
    by_code_class: list[dict[str, Any]], latency_ms_buckets: list[dict[str, Any]]
) -> VariantStats:
    """Prometheus instant-query results (``data.result``) -> the figures the canary rules judge."""
    st = VariantStats()
    for r in by_code_class:
        value = float(r["value"][1])
        cls = r["metric"].get("response_code_class", "")
        if cls == "5xx":
            st.server_errors += value
        elif cls in ("2xx", "3xx"):
            st.requests += value
    for r in latency_ms_buckets:
        le = r["metric"]["le"]
        st.latency_buckets[math.inf if le == "+Inf" else float(le) / 1000.0] = float(r["value"][1])
    return st
