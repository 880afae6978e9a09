"""The deploy DAG's three tasks against a real MLflow registry and a real model server (in a thread):
start -> sensor looks (reschedule mode) -> conclude, for a promotion and for a rollback; and the KServe
target's exact calls to the Kubernetes API."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airloop.canary import load_rollout
from airloop.config import get_pipeline
from airloop.datasets import load_partitions
from airloop.serving import replay
from airloop_airflow.operators.canary import ConcludeCanaryOperator, StartCanaryOperator
from airloop_airflow.sensors.canary import CanaryStepSensor
from airloop_airflow.targets.kserve import KServeTarget
from tests.conftest import drive_canary, serve_in_thread

pytestmark = pytest.mark.integration


class Ctx(dict):
    """The slice of a task context these operators read: XCom between the three tasks, dag and run id."""

    def __init__(self, xcom: dict):
        dag = SimpleNamespace(dag_id="flight_delays__deploy")
        ti = SimpleNamespace(xcom_pull=lambda task_ids: xcom.get(task_ids))
        super().__init__(ti=ti, dag=dag, run_id="manual__test")


@pytest.fixture()
def registry(champion, tmp_path, use_tracking_uri):
    """The session's champion (v1) plus a v2 registered from the same run as @challenger; restored after."""
    from mlflow import MlflowClient

    uri = champion[0]
    use_tracking_uri(uri)
    client = MlflowClient(uri)
    v1 = client.get_model_version_by_alias("flight_delays", "champion")
    v2 = client.create_model_version("flight_delays", v1.source, run_id=v1.run_id, model_id=v1.model_id)
    client.set_registered_model_alias("flight_delays", "challenger", v2.version)
    yield client, str(v1.version), str(v2.version)
    for alias in ("challenger", "previous"):
        try:
            client.delete_registered_model_alias("flight_delays", alias)
        except Exception:
            pass
    client.set_registered_model_alias("flight_delays", "champion", v1.version)


@pytest.fixture()
def server(registry, monkeypatch, tmp_path):
    from airloop.serving.server import ModelService, create_app, load_variants

    service = ModelService("flight_delays", None, None, 0.0, None, seed=3)
    token = "deploy-test-token"  # the connection's password is the server's admin token
    with serve_in_thread(create_app(service, lambda: load_variants("flight_delays"), admin_token=token)) as url:
        host, port = url.removeprefix("http://").split(":")
        conn = {"conn_type": "http", "host": host, "port": int(port), "password": token}
        monkeypatch.setenv("AIRFLOW_CONN_AIRLOOP_MODEL_SERVER_FLIGHT_DELAYS", json.dumps(conn))
        yield url, service


def tasks(tmp_path):
    kw = {"model": "flight_delays", "data_root": str(tmp_path)}
    return (
        StartCanaryOperator(task_id="start_canary", **kw),
        CanaryStepSensor(task_id="watch_canary", poke_interval=1, timeout=60, **kw),
        ConcludeCanaryOperator(task_id="conclude_canary", **kw),
    )


@pytest.fixture()
def bodies(feature_root):
    root, parts = feature_root
    return replay.bodies_for(get_pipeline("flight_delays"), load_partitions(root, "raw", "flight_delays", (parts[-1],)))


@pytest.fixture()
def small_canary(monkeypatch, cfg):
    from airloop import config

    # 300 challenger requests per step, as in the HTTP canary tests: with 60, sampling noise alone gives a
    # prediction PSI of about 0.15 on average between two identical models (and p99 is the maximum), and a
    # healthy challenger was once rolled back
    fast = cfg.model_copy(
        update={
            "canary": cfg.canary.model_copy(
                update={"min_requests": 300, "interval_seconds": 1, "poke_seconds": 1, "max_p99_latency_ratio": 20.0}
            )
        }
    )
    monkeypatch.setattr(config, "get_pipeline", lambda name, folder=None: fast)
    return fast


def test_a_canary_promotes_and_records_the_aliases(registry, server, bodies, small_canary, tmp_path):
    from airloop.registry import current_alias, read_history
    from airloop.storage import DataRoot

    client, v1, v2 = registry
    url, service = server
    start, sensor, conclude = tasks(tmp_path)
    assert sensor.mode == "reschedule"  # no worker slot held between looks
    xcom = {"start_canary": start.execute(Ctx({}))}
    assert xcom["start_canary"]["version"] == v2 and service.version_info()["challenger_weight"] == 0.10
    # a retried start resumes the same rollout instead of starting over
    assert start.execute(Ctx({}))["state_uri"] == xcom["start_canary"]["state_uri"]
    xcom["watch_canary"] = drive_canary(sensor, Ctx(xcom), url, bodies)
    assert xcom["watch_canary"]["action"] == "promote", xcom["watch_canary"]
    out = conclude.execute(Ctx(xcom))
    assert out["outcome"] == "promoted" and [d["percent"] for d in out["steps"]] == [10, 25, 50, 100]
    assert current_alias(client, "flight_delays", "champion") == v2
    assert current_alias(client, "flight_delays", "previous") == v1
    assert current_alias(client, "flight_delays", "challenger") is None
    hist = [(h["alias"], h["version"], h["replaced"]) for h in read_history(DataRoot(str(tmp_path)), "flight_delays")]
    assert hist == [("previous", v1, None), ("champion", v2, v1), ("challenger", None, v2)]
    assert service.version_info() == {"model": "flight_delays", "challenger_weight": 0.0, "variants": {"champion": v2}}
    with pytest.raises(AirflowSkipException, match="no challenger"):
        start.execute(Ctx({}))


def test_a_rollback_keeps_the_aliases_alerts_and_fails(registry, server, bodies, small_canary, tmp_path):
    from airloop.alerts import read_alerts
    from airloop.registry import current_alias
    from airloop.storage import DataRoot
    from airloop_airflow.notifiers.alerts import AirloopFailureNotifier, OnCallFailure

    client, v1, v2 = registry
    url, service = server
    start, sensor, conclude = tasks(tmp_path)
    xcom = {"start_canary": start.execute(Ctx({}))}
    service.variants["challenger"].model = SimpleNamespace(predict=lambda df: 1 / 0)  # every request fails
    xcom["watch_canary"] = drive_canary(sensor, Ctx(xcom), url, bodies)
    assert xcom["watch_canary"]["action"] == "rollback" and service.weight == 0.0
    with pytest.raises(OnCallFailure, match=r"rolled back at 10% of traffic: challenger 5xx rate") as failed:
        conclude.execute(Ctx(xcom))
    assert isinstance(failed.value, AirflowFailException)  # a verdict: no retry
    # the task's failure callback sends the one alert, with the figures that decided it
    ti = SimpleNamespace(
        dag_id="flight_delays__deploy",
        task_id="conclude_canary",
        run_id="r1",
        try_number=1,
        log_url="http://ui/dags/flight_delays__deploy/runs/r1/tasks/conclude_canary?try_number=1",
    )
    AirloopFailureNotifier().notify({"ti": ti, "task": conclude, "exception": failed.value})
    assert current_alias(client, "flight_delays", "champion") == v1
    assert current_alias(client, "flight_delays", "challenger") == v2
    alerts = read_alerts(DataRoot(str(tmp_path)), "flight_delays")
    assert (
        len(alerts) == 1
        and alerts[0]["kind"] == "canary_rollback"
        and alerts[0]["details"]["figures"]["challenger_5xx_rate"] > 0.02
    )
    assert alerts[0]["runbook"] == "include/runbooks/canary-rolled-back.md"
    assert alerts[0]["runbook_url"].endswith("/airloop/runbooks/canary_rollback")
    assert alerts[0]["log_url"] == ti.log_url and alerts[0]["try_number"] == 1
    assert load_rollout(DataRoot(str(tmp_path)), "flight_delays", v2).status == "rolled_back"
    with pytest.raises(AirflowSkipException, match="already ended: rolled_back"):
        start.execute(Ctx({}))


class RecordingCustomObjectsApi:
    """Stands in for ``kubernetes.client.CustomObjectsApi`` (no cluster here): records every call."""

    def __init__(self, existing=None):
        self.calls, self.obj = [], existing

    def get_namespaced_custom_object(self, **kw):
        self.calls.append(("get", kw))
        if self.obj is None:
            raise type("ApiException", (Exception,), {"status": 404})()
        return self.obj

    def create_namespaced_custom_object(self, **kw):
        self.calls.append(("create", kw))
        self.obj = kw["body"]

    def patch_namespaced_custom_object(self, **kw):
        self.calls.append(("patch", kw))


def test_kserve_target_sends_exactly_these_requests(cfg):
    from airloop import kserve

    kcfg = cfg.model_copy(update={"deployment": cfg.deployment.model_copy(update={"target": "kserve"})})
    where = {
        "group": "serving.kserve.io",
        "version": "v1beta1",
        "namespace": "ml-serving",
        "plural": "inferenceservices",
    }
    api = RecordingCustomObjectsApi()
    queries = []
    target = KServeTarget(kcfg, api, lambda q: queries.append(q) or [], lambda v: f"s3://mlflow/models/{v}")
    target.prepare("1")  # no InferenceService yet: create it serving v1
    assert api.calls[-1] == ("create", {**where, "body": kserve.inference_service(kcfg, "s3://mlflow/models/1", "1")})
    api.obj = {
        "status": {
            "components": {"predictor": {"latestCreatedRevision": "fd-00002", "previousRolledoutRevision": "fd-00001"}}
        }
    }
    target.prepare("2")
    target.set_percent(25)
    target.finish(promoted=False)
    patches = [c[1] for c in api.calls if c[0] == "patch"]
    assert patches == [
        {**where, "name": "flight-delays", "body": kserve.canary_patch("s3://mlflow/models/2", "2", 0)},
        {**where, "name": "flight-delays", "body": {"spec": {"predictor": {"canaryTrafficPercent": 25}}}},
        {**where, "name": "flight-delays", "body": {"spec": {"predictor": {"canaryTrafficPercent": 0}}}},
    ]
    target.readings()
    assert queries == [
        *kserve.queries("ml-serving", "fd-00002").values(),
        *kserve.queries("ml-serving", "fd-00001").values(),
    ]


def test_the_online_metric_joins_logged_predictions_with_ingested_outcomes(cfg, tmp_path):
    """Real rows of an ingested day: the champion's logged scores rank the real outcomes perfectly, the
    challenger's are constant; predictions of a day not ingested yet have no outcome and are left out."""
    import datetime as dt

    from airloop.canary import VariantStats, start_rollout
    from airloop.features import label
    from airloop.ingest import Interval, ingest_batch
    from airloop.serving.prediction_log import PredictionLog
    from airloop.sources import nycflights13
    from airloop.storage import DataRoot

    root = DataRoot(str(tmp_path))
    day, later = dt.date(2013, 1, 21), dt.date(2013, 1, 30)
    nycflights13.replay_days(root, cfg.name, [day], file_name=cfg.source.file_name)
    ingest_batch(cfg, root, partition=f"ds={day}", interval=Interval(None, None), run_id="t")
    rows = load_partitions(root, "raw", cfg.name, (f"ds={day}",))
    y = label(rows, "arr_delay", 15)
    not_ingested = nycflights13.day_frame(later).head(200)
    log = PredictionLog(tmp_path, cfg.name)
    now = dt.datetime.now(dt.UTC).isoformat()
    key = list(cfg.deployment.outcome_key)
    records = []
    for i, (r, yi) in enumerate(zip(rows.to_dict(orient="records"), y, strict=True)):
        variant = "champion" if i % 2 else "challenger"
        out = (0.9 if yi == 1 else 0.1) if variant == "champion" else 0.5
        records.append({"timestamp": now, "variant": variant, "inputs": {k: r[k] for k in key}, "output": out})
    records += [
        {"timestamp": now, "variant": "challenger", "inputs": {k: r[k] for k in key}, "output": 0.5}
        for r in not_ingested.to_dict(orient="records")
    ]
    log.append(records)
    log.close()
    sensor = CanaryStepSensor(task_id="watch_canary", model=cfg.name, data_root=str(tmp_path))
    readings = {"champion": VariantStats(), "challenger": VariantStats()}
    sensor.add_online_metrics(cfg, root, start_rollout(cfg.name, "2", "1", {}, now=time.time() - 60), readings)
    assert readings["champion"].online_metric == pytest.approx(1.0)
    assert readings["challenger"].online_metric == pytest.approx(0.5)
