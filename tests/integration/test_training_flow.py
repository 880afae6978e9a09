"""Three weeks of real flights through Airflow (``dag.test()``) on the configured metadata database:
ingest -> validate -> features (spark-submit) -> train (local process) -> register -> gate.

The registered model must beat a majority-class baseline and a logistic regression (standardised numeric
columns, one-hot categoricals), both computed here on the same feature partitions and holdout days. How
far it is ahead across other windows and seeds is measured, not asserted here: see
``benchmarks/bench_model_vs_logistic.py`` (9 windows of 2013, 3 seeds each).
"""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from airloop.sources import nycflights13
from airloop.storage import DataRoot, default_data_root_uri

pytestmark = pytest.mark.integration

DAYS = [dt.date(2013, 5, 1) + dt.timedelta(days=i) for i in range(21)]


@pytest.fixture(scope="module")
def dags(airflow_db):
    from airloop_airflow.dag_factory import build_pipeline_dags

    return build_pipeline_dags()


@pytest.fixture(scope="module")
def flow(dags, cfg):
    """Run the whole chain once; return the champion's training result."""
    from mlflow import MlflowClient

    root = DataRoot(default_data_root_uri())
    nycflights13.replay_days(root, cfg.name, DAYS, file_name=cfg.source.file_name)
    for day in DAYS:
        end = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
        assert str(dags["flight_delays__ingest"].test(logical_date=end).state) == "success"
    parts = [f"ds={d}" for d in DAYS]
    fr = dags["flight_delays__features"].test(run_conf={"partitions": parts})
    assert str(fr.state) == "success"
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRLOOP_MLFLOW_UI_URL", "http://mlflow.example:5000")  # the store here is a database: no UI
    try:
        tr = dags["flight_delays__train"].test(run_conf={"reason": "manual"})
    finally:
        mp.undo()
    assert str(tr.state) == "success"
    client = MlflowClient()
    champion = client.get_model_version_by_alias(cfg.name, "champion")
    result = json.loads(client.get_run(champion.run_id).data.tags["airloop_result"])
    return root, parts, client, champion, result, tr


def test_features_cover_every_validated_day(flow, cfg):
    root, parts, *_ = flow
    built = [u.rsplit("/", 1)[-1] for u in root.list_partitions("features", cfg.name)]
    assert set(parts) <= set(built)


def test_first_model_becomes_champion_with_lineage(flow, cfg):
    root, parts, client, champion, result, tr = flow
    assert result["version"] == str(champion.version)
    run = client.get_run(champion.run_id)
    tags = run.data.tags
    assert tags["airloop.dag_id"] == "flight_delays__train" and tags["airloop.run_id"] == tr.run_id
    assert tags["airloop.reason"] == "manual" and tags["airloop.try_number"] == "1"
    assert tags["airloop.image"] == "local" and tags["airloop.git_commit"]
    for p in result["train_partitions"] + result["holdout_partitions"]:
        raw = root.read_json(f"{root.partition_uri('raw', cfg.name, p)}/_manifest.json")
        assert tags[f"airloop.partition.{p}"] == raw["content_hash"]
        # every check of the gate passed (the suite's expectations and the gate's own checks)
        assert re.match(r"passed (\d+)/\1 \(suite flight_delays", tags[f"airloop.validation.{p}"])
        assert raw["content_hash"] in tags[f"airloop.validation.{p}"]
    assert tags["airloop.feature_version"]
    # the tasks link their MLflow run and model version in the UI
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        links = {
            x.task_id: XComModel.deserialize_value(x)
            for x in session.query(XComModel).filter(
                XComModel.dag_id == "flight_delays__train", XComModel.run_id == tr.run_id, XComModel.key == "mlflow_url"
            )
        }
    assert links == {
        "train_model": f"http://mlflow.example:5000/#/experiments/{run.info.experiment_id}/runs/{champion.run_id}",
        "gate_challenger": f"http://mlflow.example:5000/#/models/{cfg.name}/versions/{champion.version}",
    }
    # exactly one version for this DAG run
    key = f"flight_delays__train/{tr.run_id}"
    assert len(client.search_model_versions(f"name = '{cfg.name}' and tags.airloop_run_key = '{key}'")) == 1
    from airloop.registry import read_history

    assert [(h["alias"], h["version"]) for h in read_history(root, cfg.name)][-1] == ("champion", result["version"])


def test_model_beats_the_majority_class_baseline(flow, cfg):
    import mlflow
    import numpy as np
    from sklearn.metrics import brier_score_loss, roc_auc_score

    from airloop.datasets import load_partitions
    from airloop.features import label

    root, parts, client, champion, result, _ = flow
    train_raw = load_partitions(root, "raw", cfg.name, tuple(result["train_partitions"]))
    hold_raw = load_partitions(root, "raw", cfg.name, tuple(result["holdout_partitions"]))
    y_tr, y_ho = label(train_raw, "arr_delay", 15), label(hold_raw, "arr_delay", 15)
    hold_raw, y_ho = hold_raw[y_ho.notna()].reset_index(drop=True), y_ho[y_ho.notna()].to_numpy()
    model_p = (
        mlflow.pyfunc.load_model(f"models:/{cfg.name}@champion")
        .predict(hold_raw[cfg.request_columns])["prediction"]
        .to_numpy()
    )
    base_p = np.full(len(y_ho), float(y_tr[y_tr.notna()].mean()))  # the base rate: no ranking skill
    assert roc_auc_score(y_ho, model_p) > roc_auc_score(y_ho, base_p) + 0.1
    assert brier_score_loss(y_ho, model_p) < brier_score_loss(y_ho, base_p)
    assert result["metrics"]["roc_auc"] == pytest.approx(roc_auc_score(y_ho, model_p), abs=1e-6)


def test_a_drift_triggered_run_carries_the_drift_context_in_its_conf_and_tags(flow, dags, cfg):
    """What the drift loop's trigger sends (see tests/operators/test_drift_loop.py) reaches MLflow."""
    _, _, client, *_ = flow
    context = {
        "model": cfg.name,
        "champion_version": "1",
        "drift_share": 0.33,
        "dataset_drift": True,
        "drifted_columns": {"month": 6000.0, "temp": 5.9},
        "prediction_score": 0.4,
        "prediction_drifted": True,
        "report_uri": "file:///data/reports/flight_delays/drift/2013-07-01/report.html",
        "reference": {"uri": "runs:/abc/reference/reference_sample.parquet", "rows": 5000},
        "current": {"start": "2013-07-01T00:00:00+00:00", "end": "2013-07-08T00:00:00+00:00", "rows": 6000},
    }
    run = dags["flight_delays__train"].test(run_conf={"reason": "drift", "drift": context})
    assert run.conf["drift"] == context
    key = f"flight_delays__train/{run.run_id}"
    (version,) = client.search_model_versions(f"name = '{cfg.name}' and tags.airloop_run_key = '{key}'")
    tags = client.get_run(version.run_id).data.tags
    assert tags["airloop.reason"] == "drift" and json.loads(tags["airloop.drift"]) == context


def test_model_beats_a_logistic_regression_on_the_same_features(flow, cfg):
    """The recipe starts from the regularised linear model (so a seed cannot stop far behind it) and encodes
    the time of day piecewise-linearly (the shape of delays through the day, which a linear term misses)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from airloop.datasets import load_partitions
    from airloop.features import categorical_features, numeric_features
    from airloop.training.model import Preprocessor

    root, _, _, _, result, _ = flow
    target = cfg.task.target
    train_f = load_partitions(root, "features", cfg.name, tuple(result["train_partitions"]))
    hold_f = load_partitions(root, "features", cfg.name, tuple(result["holdout_partitions"]))
    train_f, hold_f = train_f[train_f[target].notna()], hold_f[hold_f[target].notna()]
    pre = Preprocessor(numeric_features(cfg.features), categorical_features(cfg.features)).fit(train_f)
    lr = LogisticRegression(max_iter=5000).fit(pre.transform(train_f), train_f[target])
    lr_auc = roc_auc_score(hold_f[target], lr.predict_proba(pre.transform(hold_f))[:, 1])
    assert len(hold_f) > 1000  # four days of flights
    assert result["metrics"]["roc_auc"] > lr_auc, (result["metrics"]["roc_auc"], lr_auc)
