from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from airloop.features import FEATURE_COLUMNS, SOURCE_COLUMNS, compute_features, feature_version, label
from airloop.sources import nycflights13
from airloop.storage import MANIFEST

pytestmark = pytest.mark.unit

LEAKS = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]


def _raw(day=dt.date(2013, 1, 5)):
    df = nycflights13.day_frame(day)
    return df.assign(time_hour=df["time_hour"].dt.tz_localize(None))


def test_features_use_nothing_known_only_after_departure():
    raw = _raw()
    with_leaks = compute_features(raw)
    without = compute_features(raw.drop(columns=LEAKS))
    pd.testing.assert_frame_equal(with_leaks, without)
    assert not set(LEAKS) & set(SOURCE_COLUMNS)


def test_feature_values():
    f = compute_features(pd.DataFrame([{
        "year": 2013, "month": 1, "day": 5, "hour": 6, "minute": 30, "sched_arr_time": 915, "carrier": "UA",
        "origin": "EWR", "dest": "IAH", "distance": 1400, "temp": 30.0, "dewp": 20.0, "humid": 60.0,
        "wind_dir": 90.0, "wind_speed": 10.0, "wind_gust": None, "precip": 0.0, "pressure": None, "visib": 10.0,
    }]))
    row = f.iloc[0]
    assert row["day_of_week"] == 5  # 2013-01-05 was a Saturday
    assert row["dep_minute_of_day"] == 390 and row["arr_minute_of_day"] == 555
    assert row["wind_dir_sin"] == pytest.approx(1.0) and row["wind_dir_cos"] == pytest.approx(0.0, abs=1e-12)
    assert pd.isna(row["pressure"]) and row["carrier"] == "UA"


def test_missing_inputs_are_named():
    with pytest.raises(ValueError, match=r"missing input columns \['dest'\]"):
        compute_features(_raw().drop(columns=["dest"]))


def test_label_rule():
    df = pd.DataFrame({"arr_delay": [16.0, 15.0, None, -3.0]})
    assert label(df, "arr_delay", 15).tolist()[:2] == [1.0, 0.0]
    assert pd.isna(label(df, "arr_delay", 15)[2])
    assert label(df, "arr_delay", None).tolist()[3] == -3.0


def test_spark_and_serving_paths_give_identical_features(spark, cfg):
    """The same rows through the Spark job's mapper and through the pandas function serving calls."""
    from airloop.spark.build_features import make_mapper, spark_schema

    raw = _raw(dt.date(2013, 2, 9))  # the blizzard: many nulls
    sdf = spark.createDataFrame(raw)
    via_spark = sdf.mapInPandas(make_mapper(cfg), schema=spark_schema(cfg.task.target)).toPandas()
    via_pandas = compute_features(raw)
    key = ["time_hour", "carrier", "dest", "dep_minute_of_day"]
    a = via_spark[FEATURE_COLUMNS + ["time_hour"]].sort_values(key).reset_index(drop=True)
    b = via_pandas[FEATURE_COLUMNS + ["time_hour"]].sort_values(key).reset_index(drop=True)
    a["time_hour"] = a["time_hour"].astype("datetime64[us]")
    b["time_hour"] = b["time_hour"].astype("datetime64[us]")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert len(a) == len(raw)


def test_feature_job_writes_atomic_idempotent_partitions(feature_root, spark, cfg):
    from airloop.spark.build_features import run

    root, parts = feature_root
    uri = root.partition_uri("features", cfg.name, parts[0])
    m1 = root.read_json(f"{uri}/{MANIFEST}")
    assert m1["rows"] == len(nycflights13.day_frame(dt.date(2013, 1, 1)))
    assert m1["feature_version"] == feature_version()
    assert m1["source_content_hash"] == root.read_json(f"{root.partition_uri('raw', cfg.name, parts[0])}/{MANIFEST}")["content_hash"]
    before = pd.read_parquet(f"{uri}/data")
    run(cfg.name, root.uri, [parts[0]], spark=spark)  # re-run: replaced, not appended
    after = pd.read_parquet(f"{uri}/data")
    assert len(after) == len(before)
    pd.testing.assert_frame_equal(before, after)
    assert [p.name for p in __import__("pathlib").Path(uri).parent.iterdir() if p.name.startswith(".tmp")] == []


def test_failed_feature_job_keeps_the_old_partition(feature_root, spark, cfg, monkeypatch):
    from airloop.spark import build_features

    root, parts = feature_root
    uri = root.partition_uri("features", cfg.name, parts[1])
    before = pd.read_parquet(f"{uri}/data")

    def broken(cfg):
        def mapper(batches):
            for _ in batches:
                raise RuntimeError("executor lost")
            yield from ()
        return mapper

    monkeypatch.setattr(build_features, "make_mapper", broken)
    with pytest.raises(Exception, match="executor lost"):
        build_features.run(cfg.name, root.uri, [parts[1]], spark=spark)
    pd.testing.assert_frame_equal(pd.read_parquet(f"{uri}/data"), before)
