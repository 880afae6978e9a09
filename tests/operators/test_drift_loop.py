"""The drift loop's tasks with a real champion (trained on January 2013, registered in MLflow) and real
traffic in the prediction log: summer traffic drifts and triggers one retraining with the drift context;
traffic from the champion's own period does not; the cooldown and a running retraining hold it back."""

from __future__ import annotations

import collections
import datetime as dt
import json
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowSkipException, DagRunTriggerException

from airloop.config import get_pipeline
from airloop.serving.prediction_log import PredictionLog
from airloop.serving.server import ModelService, load_variants
from airloop.sources import nycflights13
from airloop.storage import DataRoot
from airloop_airflow.operators.drift import DriftCheckOperator, RetrainOnDriftOperator
from airloop_airflow.sensors.drift import DriftSensor

CFG = get_pipeline("flight_delays")

pytestmark = pytest.mark.integration

SUMMER = (dt.datetime(2013, 7, 1, tzinfo=dt.UTC), dt.datetime(2013, 7, 8, tzinfo=dt.UTC))
OWN = (dt.datetime(2013, 1, 15, tzinfo=dt.UTC), dt.datetime(2013, 1, 22, tzinfo=dt.UTC))


def ctx(interval, xcom, running_train_runs=0):
    outlet_events = collections.defaultdict(lambda: SimpleNamespace(extra=None))
    ti = SimpleNamespace(
        xcom_pull=lambda task_ids: xcom.get(task_ids),
        xcom_push=lambda key, value: xcom.__setitem__(key, value),
        get_dr_count=lambda dag_id, states: running_train_runs,
    )
    return {
        "ti": ti,
        "data_interval_start": interval[0],
        "data_interval_end": interval[1],
        "run_id": f"scheduled__{interval[0].isoformat()}",
        "outlet_events": outlet_events,
        "dag": SimpleNamespace(dag_id="flight_delays__drift"),
    }


@pytest.fixture(scope="module")
def served(champion, tmp_path_factory):
    """The January champion scored real traffic of a summer week and of a week of its own period."""
    uri, _ = champion
    root = tmp_path_factory.mktemp("drift-root")
    champ, _ = load_variants("flight_delays", uri)
    service = ModelService("flight_delays", champ, None, 0.0, PredictionLog(root, "flight_delays"))
    for start, end in (SUMMER, OWN):
        days = [(start + dt.timedelta(days=i)).date() for i in range((end - start).days)]
        for day in days:
            rows = nycflights13.day_frame(day)
            for chunk_start in range(0, len(rows), 200):
                chunk = rows.iloc[chunk_start : chunk_start + 200]
                body = json.dumps(
                    {
                        "dataframe_split": json.loads(
                            chunk[list(dict.fromkeys([*CFG.request_columns, *CFG.deployment.outcome_key]))].to_json(
                                orient="split", index=False
                            )
                        )
                    }
                )
                status, _ = service.invoke(body.encode(), "application/json", None, f"{day}T12:00:00")
                assert status == 200
    service.log.close()
    return uri, root


@pytest.fixture()
def env(served, use_tracking_uri):
    uri, root = served
    use_tracking_uri(uri)
    return DataRoot(str(root))


def tasks(root):
    kw = {"model": "flight_delays", "data_root": root.uri}
    return (
        DriftCheckOperator(task_id="check_drift", **kw),
        DriftSensor(task_id="watch_drift", poke_interval=60, timeout=600, **kw),
        RetrainOnDriftOperator(task_id="trigger_retrain", **kw),
    )


def test_summer_traffic_drifts_and_triggers_one_retraining_with_the_context(env, cfg, monkeypatch, capsys, tmp_path):
    from mlflow import MlflowClient

    from airloop.drift import read_history

    check, sensor, trigger = tasks(env)
    assert sensor.mode == "reschedule"  # the sensor frees its worker slot while it waits
    xcom: dict = {}
    result = check.execute(ctx(SUMMER, xcom))
    assert result["dataset_drift"] and "month" in result["drifted_columns"] and result["current_rows"] > 5000
    assert xcom["drift_report_url"].endswith("/reports/flight_delays/drift/2013-07-01/report.html")
    html = env.read_bytes(result["report_uri"])
    assert b"<html" in html and b"dewp" in html and b"Drift" in html
    run_id = MlflowClient().get_model_version_by_alias("flight_delays", "champion").run_id
    logged = [a.path for a in MlflowClient().list_artifacts(run_id, "drift/2013-07-01")]
    assert logged == ["drift/2013-07-01/drift_report.html"]  # on the champion's MLflow run too
    assert [h["interval_start"][:10] for h in read_history(env, "flight_delays")] == ["2013-07-01"]
    assert env.exists(env.drift_trend("flight_delays"))
    from airloop_local import cli

    monkeypatch.setenv("AIRLOOP_DATA_ROOT", env.uri)
    assert cli.main(["--state-dir", str(tmp_path), "drift", "history", "flight_delays"]) == 0
    assert "2013-07-01 .. 2013-07-08" in capsys.readouterr().out  # the time series, queryable

    poke = sensor.poke(ctx(SUMMER, xcom))
    assert poke.is_done
    xcom["watch_drift"] = poke.xcom_value
    c = ctx(SUMMER, xcom)
    with pytest.raises(DagRunTriggerException) as triggered:
        trigger.execute(c)
    conf = triggered.value.conf
    assert triggered.value.trigger_dag_id == "flight_delays__train" and conf["reason"] == "drift"
    assert conf["drift"]["model"] == "flight_delays" and conf["drift"]["dataset_drift"] is True
    assert conf["drift"]["current"]["start"].startswith("2013-07-01") and "month" in conf["drift"]["drifted_columns"]
    assert conf["drift"]["report_uri"] == result["report_uri"] and conf["drift"]["champion_version"]
    assert c["outlet_events"][next(iter(c["outlet_events"]))].extra == conf["drift"]  # the Asset event's extra

    # a second drift result inside the cooldown starts nothing
    with pytest.raises(AirflowSkipException, match="cooldown"):
        trigger.execute(ctx(SUMMER, xcom))


def test_a_running_retraining_is_never_doubled(env, cfg):
    if env.exists(env.retrain_log("flight_delays")):
        env.remove(env.retrain_log("flight_delays"))
    _, _, trigger = tasks(env)
    xcom = {"watch_drift": {"current": {"start": "2013-07-01T00:00:00+00:00"}, "model": "flight_delays"}}
    with pytest.raises(AirflowSkipException, match="already queued or running"):
        trigger.execute(ctx(SUMMER, xcom, running_train_runs=1))


def test_traffic_from_the_champions_own_period_does_not_drift(env, cfg):
    check, sensor, _ = tasks(env)
    xcom: dict = {}
    result = check.execute(ctx(OWN, xcom))
    assert not result["dataset_drift"] and not result["prediction_drifted"], result
    # the latest result is the summer one (a later interval): the sensor still sees that drift ...
    assert sensor.poke(ctx(OWN, xcom)).is_done
    # ... but once this interval is the latest and says no drift, it skips at once
    from airloop.drift import read_history

    rows = [r for r in read_history(env, "flight_delays") if r["interval_start"].startswith("2013-01-15")]
    env.write_bytes_atomic(env.drift_history("flight_delays"), (json.dumps(rows[0]) + "\n").encode())
    with pytest.raises(AirflowSkipException, match="no drift"):
        sensor.poke(ctx(OWN, xcom))


def test_no_traffic_in_the_interval_gives_no_verdict(env):
    check, _, _ = tasks(env)
    with pytest.raises(AirflowSkipException, match="needs 200"):
        check.execute(ctx((dt.datetime(2013, 3, 1, tzinfo=dt.UTC), dt.datetime(2013, 3, 8, tzinfo=dt.UTC)), {}))


def test_new_features_alone_do_not_retrain_a_champion_when_configured(env, cfg, monkeypatch):
    from airloop import config
    from airloop_airflow.operators.training import TrainModelOperator

    waiting = cfg.model_copy(update={"training": cfg.training.model_copy(update={"on_new_features": "until_champion"})})
    monkeypatch.setattr(config, "get_pipeline", lambda name, folder=None: waiting)
    op = TrainModelOperator(task_id="train_model", model=cfg.name, data_root=env.uri, reason="schedule")
    with pytest.raises(AirflowSkipException, match="new features alone do not retrain"):
        op.execute(ctx(SUMMER, {}))


def test_the_waiting_sensor_gives_its_slot_back_instead_of_sleeping(tmp_path):
    """Reschedule mode (``deferrable=False``), no drift result yet: ``execute`` ends at once with a reschedule
    request (the task leaves its worker slot and the scheduler starts it again after ``poke_interval``), rather
    than sleeping in the slot. The deferrable default is tested in tests/operators/test_triggers.py."""
    from airflow.sdk.exceptions import AirflowRescheduleException

    sensor = DriftSensor(
        task_id="watch_drift",
        model="flight_delays",
        data_root=str(tmp_path),
        poke_interval=60,
        timeout=600,
        deferrable=False,
    )
    c = ctx(SUMMER, {})
    c["ti"].get_first_reschedule_date = lambda context: None
    before = dt.datetime.now(dt.UTC)
    with pytest.raises(AirflowRescheduleException) as rescheduled:
        sensor.execute(c)
    assert 55 <= (rescheduled.value.reschedule_date - before).total_seconds() <= 65
