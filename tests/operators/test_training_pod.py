"""The exact pod the training task asks Kubernetes for (no cluster needed: dry run)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from airloop_airflow.operators.training import ENTRYPOINT, TrainModelOperator

pytestmark = pytest.mark.unit

PARTS = ["ds=2013-01-01", "ds=2013-01-02", "ds=2013-01-03"]


@pytest.fixture()
def pod(cfg, monkeypatch):
    monkeypatch.setenv("AIRLOOP_DATA_ROOT", "s3://airloop-data/prod")
    monkeypatch.setenv("AIRLOOP_GIT_COMMIT", "abc123")
    op = TrainModelOperator(task_id="train_model", model=cfg.name, reason="drift", drift={"share": 0.6})
    context = {
        "dag": SimpleNamespace(dag_id="flight_delays__train"),
        "run_id": "manual__2013-07-01T00:00:00+00:00",
        "ti": SimpleNamespace(try_number=2),
    }
    kpo = op.build_pod_operator(context, cfg, PARTS)
    return kpo, kpo.build_pod_request_obj(dry_run=True)


def test_pod_resources_and_gpu_scheduling(pod, cfg):
    _, p = pod
    c = p.spec.containers[0]
    assert c.resources.limits == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    assert c.resources.requests == {"cpu": "4", "memory": "16Gi"}
    assert p.spec.node_selector == {"nvidia.com/gpu.present": "true"}
    [tol] = p.spec.tolerations
    assert (tol.key, tol.operator, tol.effect, tol.value) == ("nvidia.com/gpu", "Exists", "NoSchedule", None)
    assert p.metadata.namespace == "ml-training"
    assert c.image == cfg.training.image
    assert p.spec.service_account_name == "airloop-training"


def test_pod_command_is_the_local_command(pod):
    _, p = pod
    c = p.spec.containers[0]
    assert c.command == ENTRYPOINT == ["python", "-m", "airloop.training.train"]
    args = dict(zip(c.args[::2], c.args[1::2], strict=True))
    assert args["--model"] == "flight_delays"
    assert args["--data-root"] == "s3://airloop-data/prod"
    assert args["--partitions"] == ",".join(PARTS)
    assert (
        args["--run-key"] == "flight_delays__train/manual__2013-07-01T00:00:00+00:00"
    )  # no try number: retries reuse it
    assert args["--result-file"] == "/airflow/xcom/return.json"
    lineage = json.loads(args["--lineage"])
    assert lineage["airloop.reason"] == "drift" and json.loads(lineage["airloop.drift"]) == {"share": 0.6}
    assert lineage["airloop.try_number"] == "2" and lineage["airloop.git_commit"] == "abc123"
    assert lineage["airloop.image"] == "ghcr.io/airloop/train:0.1.0"


def test_pod_env_and_secrets(pod, cfg):
    _, p = pod
    c = p.spec.containers[0]
    env = {e.name: e.value for e in c.env}
    assert env["MLFLOW_TRACKING_URI"] == cfg.training.mlflow_tracking_uri
    assert env["AIRLOOP_DATA_ROOT"] == "s3://airloop-data/prod"
    assert [e.secret_ref.name for e in c.env_from] == ["mlflow-credentials"]
    assert not any("PASSWORD" in e.name or "SECRET" in e.name for e in c.env)  # secrets only by reference


def test_pod_security_labels_and_lifecycle(pod):
    kpo, p = pod
    sc = p.spec.security_context
    assert (sc.run_as_non_root, sc.run_as_user, sc.fs_group) == (True, 1000, 1000)
    csc = p.spec.containers[0].security_context
    assert csc.allow_privilege_escalation is False and csc.capabilities.drop == ["ALL"]
    labels = p.metadata.labels
    assert labels["airloop/model"] == "flight-delays"
    assert labels["airloop/dag-id"] == "flight-delays--train"
    assert labels["airloop/run-id"] == "manual__2013-07-01T00-00-00-00-00"  # ":" and "+" are not allowed
    assert len(labels["airloop/run-id"]) <= 63
    assert kpo.startup_timeout_seconds == 900
    assert kpo.on_finish_action.value == "delete_succeeded_pod"
    assert kpo.do_xcom_push is True


def test_mode_is_local_without_a_kubernetes_connection(cfg, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", raising=False)
    op = TrainModelOperator(task_id="t", model=cfg.name)
    assert op.use_kubernetes(cfg) is False
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", '{"conn_type": "kubernetes", "extra": {"in_cluster": true}}')
    assert op.use_kubernetes(cfg) is True
    assert TrainModelOperator(task_id="t2", model=cfg.name, mode="local").use_kubernetes(cfg) is False
