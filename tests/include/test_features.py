from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from airloop import features as F
from airloop.features import compute_features, feature_columns, feature_version, input_columns, label
from airloop.sources import nycflights13
from airloop.storage import MANIFEST

pytestmark = pytest.mark.unit

LEAKS = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]


def _raw(day=dt.date(2013, 1, 5)):
    df = nycflights13.day_frame(day)
    return df.assign(time_hour=df["time_hour"].dt.tz_localize(None))


def test_features_use_nothing_known_only_after_departure(cfg):
    raw = _raw()
    with_leaks = compute_features(raw, cfg.features)
    without = compute_features(raw.drop(columns=LEAKS), cfg.features)
    pd.testing.assert_frame_equal(with_leaks, without)
    assert not set(LEAKS) & set(input_columns(cfg.features))


def test_feature_values(cfg):
    f = compute_features(
        pd.DataFrame(
            [
                {
                    "year": 2013,
                    "month": 1,
                    "day": 5,
                    "hour": 6,
                    "minute": 30,
                    "sched_arr_time": 915,
                    "carrier": "UA",
                    "origin": "EWR",
                    "dest": "IAH",
                    "distance": 1400,
                    "temp": 30.0,
                    "dewp": 20.0,
                    "humid": 60.0,
                    "wind_dir": 90.0,
                    "wind_speed": 10.0,
                    "wind_gust": None,
                    "precip": 0.0,
                    "pressure": None,
                    "visib": 10.0,
                }
            ]
        ),
        cfg.features,
    )
    row = f.iloc[0]
    assert row["day_of_week"] == 5  # 2013-01-05 was a Saturday
    assert row["dep_minute_of_day"] == 390 and row["arr_minute_of_day"] == 555
    assert row["wind_dir_sin"] == pytest.approx(1.0) and row["wind_dir_cos"] == pytest.approx(0.0, abs=1e-12)
    assert pd.isna(row["pressure"]) and row["carrier"] == "UA"


def test_missing_inputs_are_named(cfg):
    with pytest.raises(ValueError, match=r"missing input columns \['dest'\]"):
        compute_features(_raw().drop(columns=["dest"]), cfg.features)


def test_label_rule():
    df = pd.DataFrame({"arr_delay": [16.0, 15.0, None, -3.0]})
    assert label(df, "arr_delay", 15).tolist()[:2] == [1.0, 0.0]
    assert pd.isna(label(df, "arr_delay", 15)[2])
    assert label(df, "arr_delay", None).tolist()[3] == -3.0


@pytest.mark.heavy
def test_spark_and_serving_paths_give_identical_features(spark, cfg):
    """The same rows through the Spark job's mapper and through the pandas function serving calls."""
    from airloop.spark.build_features import make_mapper, spark_schema

    raw = _raw(dt.date(2013, 2, 9))  # the blizzard: many nulls
    sdf = spark.createDataFrame(raw)
    via_spark = sdf.mapInPandas(make_mapper(cfg), schema=spark_schema(cfg)).toPandas()
    via_pandas = compute_features(raw, cfg.features, keep=["time_hour"])
    key = ["time_hour", "carrier", "dest", "dep_minute_of_day"]
    columns = feature_columns(cfg.features) + ["time_hour"]
    a = via_spark[columns].sort_values(key).reset_index(drop=True)
    b = via_pandas[columns].sort_values(key).reset_index(drop=True)
    a["time_hour"] = a["time_hour"].astype("datetime64[us]")
    b["time_hour"] = b["time_hour"].astype("datetime64[us]")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert len(a) == len(raw)


@pytest.mark.heavy
def test_feature_job_writes_atomic_idempotent_partitions(feature_root, spark, cfg):
    from airloop.spark.build_features import run

    root, parts = feature_root
    uri = root.partition_uri("features", cfg.name, parts[0])
    m1 = root.read_json(f"{uri}/{MANIFEST}")
    assert m1["rows"] == len(nycflights13.day_frame(dt.date(2013, 1, 1)))
    assert m1["feature_version"] == feature_version(cfg.features)
    assert (
        m1["source_content_hash"]
        == root.read_json(f"{root.partition_uri('raw', cfg.name, parts[0])}/{MANIFEST}")["content_hash"]
    )
    before = pd.read_parquet(f"{uri}/data")
    run(cfg.name, root.uri, [parts[0]], spark=spark)  # re-run: replaced, not appended
    after = pd.read_parquet(f"{uri}/data")
    assert len(after) == len(before)
    pd.testing.assert_frame_equal(before, after)
    assert [p.name for p in __import__("pathlib").Path(uri).parent.iterdir() if p.name.startswith(".tmp")] == []


@pytest.mark.heavy
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


# --- the vocabulary ---------------------------------------------------------------------------------


def _features(**kwargs):
    from airloop.features import FeaturesConfig

    return FeaturesConfig.model_validate(kwargs)


def test_every_transform_of_the_vocabulary():
    df = pd.DataFrame(
        {
            "n": [1.0, -2.0, None],
            "hhmm": [915, 0, 2359],
            "deg": [90.0, 180.0, 0.0],
            "ts": ["2024-03-04 05:06:00", "2024-12-31 23:00:00", None],
            "y": [2013, 2013, 2013],
            "m": [1, 2, 12],
            "d": [5, 9, 31],
            "a": [2, 3, 4],
            "b": [10, 0, 1],
            "cat": ["x", None, 3.0],
        }
    )
    spec = _features(
        columns=[
            {"name": "n"},
            {"name": "n_clip", "transform": "clip", "column": "n", "min": -1, "max": 0.5},
            {"name": "n_log", "transform": "log1p", "column": "n"},
            {"name": "deg", "transform": "cyclical", "period": 360},
            {"name": "mins", "transform": "hhmm_minutes", "column": "hhmm"},
            {"name": "dow", "transform": "date_part", "part": "dayofweek", "column": "ts"},
            {"name": "doy", "transform": "date_part", "part": "dayofyear", "columns": ["y", "m", "d"]},
            {"name": "ratio", "transform": "arithmetic", "expr": "(a * 60 + b) / b"},
            {"name": "cat", "transform": "categorical"},
        ]
    )
    assert input_columns(spec) == ["n", "deg", "hhmm", "ts", "y", "m", "d", "a", "b", "cat"]
    f = compute_features(df, spec)
    assert feature_columns(spec) == list(f.columns)
    assert f["n_clip"].tolist()[:2] == [0.5, -1.0]
    assert f["n_log"].iloc[1] == 0.0 and f["n_log"].iloc[0] == pytest.approx(0.6931, abs=1e-4)
    assert f["deg_sin"].iloc[0] == pytest.approx(1.0) and f["deg_cos"].iloc[1] == pytest.approx(-1.0)
    assert f["mins"].tolist() == [555.0, 0.0, 1439.0]
    assert f["dow"].iloc[0] == 0.0 and f["dow"].iloc[1] == 1.0 and pd.isna(f["dow"].iloc[2])  # Mon, Tue
    assert f["doy"].tolist() == [5.0, 40.0, 365.0]
    assert f["ratio"].iloc[0] == 13.0 and pd.isna(f["ratio"].iloc[1])  # division by zero: missing, not inf
    assert f["cat"].tolist() == ["x", None, "3"]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"name": "x", "transform": "nosuch"}, "unknown transform 'nosuch'"),
        ({"name": "x", "transform": "cyclical"}, r"needs \['period'\]"),
        ({"name": "x", "transform": "categorical", "period": 3}, r"does not take \['period'\]"),
        ({"name": "x", "transform": "date_part", "part": "fortnight"}, "part must be one of"),
        ({"name": "x", "transform": "arithmetic", "expr": "__import__('os').system('true')"}, "only column names"),
        ({"name": "x", "transform": "arithmetic", "expr": "a ** 2"}, "only column names"),
    ],
)
def test_bad_vocabulary_entries_are_refused_with_the_reason(entry, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        _features(columns=[entry])


def test_module_escape_hatch_from_the_pipelines_folder(tmp_path):
    (tmp_path / "team_features.py").write_text(
        "def build(df):\n    return df.assign(total=df['a'] + df['b'], kind=df['k'].str.upper())\n"
    )
    spec = _features(module="team_features:build", inputs=["a", "b", "k"], numeric=["total"], categorical=["kind"])
    out = compute_features(
        pd.DataFrame({"a": [1, 2], "b": [3, 4], "k": ["x", "y"], "z": [0, 0]}), spec, search_dirs=[tmp_path]
    )
    assert list(out.columns) == ["total", "kind"] and out["total"].tolist() == [4.0, 6.0]
    assert out["kind"].tolist() == ["X", "Y"]
    before = feature_version(spec, [tmp_path])
    (tmp_path / "team_features.py").write_text(
        "def build(df):\n    return df.assign(total=df['a'] * df['b'], kind=df['k'])\n"
    )
    import sys

    sys.modules.pop("team_features", None)
    assert feature_version(spec, [tmp_path]) != before  # the version follows the function's source


def test_feature_version_follows_the_declared_definition(cfg):
    changed = cfg.features.model_copy(update={"piecewise": ()})
    assert feature_version(cfg.features) == feature_version(cfg.features)
    assert feature_version(changed) != feature_version(cfg.features)


def test_vocabulary_reproduces_the_hand_written_flight_features(cfg):
    """The flights YAML's vocabulary gives exactly the features of the function it replaced."""
    import numpy as np

    raw = _raw(dt.date(2013, 2, 9))
    f = compute_features(raw, cfg.features)
    num = {
        c: pd.to_numeric(raw[c], errors="coerce").astype("float64")
        for c in input_columns(cfg.features)
        if c not in ("carrier", "origin", "dest")
    }
    dates = pd.to_datetime(pd.DataFrame({"year": num["year"], "month": num["month"], "day": num["day"]}))
    expected = {
        "day_of_week": dates.dt.dayofweek.astype("float64"),
        "dep_minute_of_day": num["hour"] * 60.0 + num["minute"],
        "arr_minute_of_day": np.floor(num["sched_arr_time"] / 100.0) * 60.0 + np.mod(num["sched_arr_time"], 100.0),
        "log_distance": np.log1p(num["distance"].clip(lower=0)),
        "wind_dir_sin": np.sin(np.deg2rad(num["wind_dir"])),
        "wind_dir_cos": np.cos(np.deg2rad(num["wind_dir"])),
    }
    for name, values in expected.items():
        pd.testing.assert_series_equal(f[name], values, check_names=False, check_exact=True)
    assert F.TRANSFORMS  # the registry the config validates against
