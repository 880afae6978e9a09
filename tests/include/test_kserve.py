"""The KServe target, exactly: the InferenceService manifest, the canary patches and the PromQL."""

from __future__ import annotations

import math

import pytest

from airloop import kserve

pytestmark = pytest.mark.unit


@pytest.fixture
def kcfg(cfg):
    return cfg.model_copy(update={"deployment": cfg.deployment.model_copy(update={"target": "kserve"})})


def test_inference_service_manifest(kcfg):
    assert kserve.inference_service(kcfg, "s3://mlflow/1/abc/artifacts/model", "4") == {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "flight-delays",
            "namespace": "ml-serving",
            "labels": {"app.kubernetes.io/part-of": "airloop", "airloop/model": "flight-delays"},
            "annotations": {"serving.kserve.io/deploymentMode": "Serverless", "airloop/model-version": "4"},
        },
        "spec": {
            "predictor": {
                "serviceAccountName": "airloop-serving",
                "minReplicas": 1,
                "maxReplicas": 4,
                "model": {
                    "modelFormat": {"name": "mlflow"},
                    "protocolVersion": "v2",
                    "storageUri": "s3://mlflow/1/abc/artifacts/model",
                    "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
                },
            }
        },
    }


def test_canary_and_traffic_patches():
    assert kserve.canary_patch("s3://m/5", "5", 0) == {
        "metadata": {"annotations": {"airloop/model-version": "5"}},
        "spec": {"predictor": {"canaryTrafficPercent": 0, "model": {"storageUri": "s3://m/5"}}},
    }
    assert kserve.traffic_patch(25) == {"spec": {"predictor": {"canaryTrafficPercent": 25}}}
    with pytest.raises(ValueError):
        kserve.traffic_patch(101)


def test_queries_and_figures_from_prometheus():
    q = kserve.queries("ml-serving", "flight-delays-predictor-00002")
    sel = 'namespace_name="ml-serving",revision_name="flight-delays-predictor-00002"'
    assert q == {
        "by_code_class": f"sum by (response_code_class) (revision_app_request_count{{{sel}}})",
        "latency_ms_buckets": f"sum by (le) (revision_app_request_latencies_bucket{{{sel}}})",
    }
    st = kserve.stats_from_prometheus(
        [
            {"metric": {"response_code_class": "2xx"}, "value": [0, "180"]},
            {"metric": {"response_code_class": "4xx"}, "value": [0, "7"]},
            {"metric": {"response_code_class": "5xx"}, "value": [0, "20"]},
        ],
        [{"metric": {"le": "50"}, "value": [0, "150"]}, {"metric": {"le": "+Inf"}, "value": [0, "200"]}],
    )
    assert (st.requests, st.server_errors) == (180, 20)  # a 4xx is the client's fault: counted for neither
    assert st.latency_buckets == {0.05: 150, math.inf: 200}  # milliseconds -> seconds


def test_revisions_from_status():
    isvc = {
        "status": {"components": {"predictor": {"latestCreatedRevision": "r-2", "previousRolledoutRevision": "r-1"}}}
    }
    assert kserve.revisions(isvc) == {"challenger": "r-2", "champion": "r-1"}
    assert kserve.revisions({}) == {"challenger": None, "champion": None}
