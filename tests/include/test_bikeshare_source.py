"""The bike sharing adapter: the hours of 2011 in time order, every day landed in the landing layout that
ingestion reads, and the model's gate passing real days and stopping broken ones.

Every one of the 365 days passes the suite (measured once: 50 of 50 expectations each); validating all
of them takes minutes, so the tests here validate a few chosen days."""

from __future__ import annotations

import datetime as dt
import uuid

import pandas as pd
import pytest

from airloop.config import get_pipeline
from airloop.datasets import load_partitions
from airloop.ingest import Interval, ingest_batch, landing_uri, read_batch
from airloop.sources import bikeshare
from airloop.storage import DataRoot
from airloop.validation import validate_frame

pytestmark = pytest.mark.unit

CFG = get_pipeline("bikeshare")
YEAR = [dt.date(2011, 1, 1) + dt.timedelta(days=i) for i in range(365)]


def test_the_frame_is_every_hour_of_2011_in_time_order():
    df = bikeshare.frame()
    assert len(df) == 8645 and list(df.columns) == [*CFG.data_schema.columns]
    assert str(df["time"].dtype).startswith("datetime64") and df["time"].dt.tz is None
    assert df["time"].is_monotonic_increasing and df["time"].is_unique
    assert df["time"].iloc[0] == pd.Timestamp("2011-01-01 00:00") and df["time"].iloc[-1].year == 2011
    # the time is the day of the year and the hour, and agrees with the file's own calendar columns
    assert (df["time"].dt.dayofyear == df["day"]).all() and (df["time"].dt.hour == df["hr"]).all()
    assert ((df["time"].dt.dayofweek + 1) % 7 == df["weekday"]).all()  # the file counts from Sunday = 0
    assert (df["bikers"] == df["casual"] + df["registered"]).all()
    assert bikeshare.days() == YEAR


def test_a_day_frame_is_that_day_only():
    day = bikeshare.day_frame(dt.date(2011, 1, 27))
    assert len(day) == 8 and (day["time"].dt.date == dt.date(2011, 1, 27)).all()  # the shortest day
    assert len(bikeshare.day_frame(dt.date(2011, 7, 4))) == 24
    with pytest.raises(ValueError, match="2011 only"):
        bikeshare.day_frame(dt.date(2012, 1, 1))


@pytest.mark.heavy
def test_every_day_of_2011_lands_where_ingestion_reads_it(tmp_path):
    root = DataRoot(tmp_path)
    uris = bikeshare.land_days(root, CFG.name, YEAR, CFG.source.file_name)
    assert uris == [landing_uri(CFG, root, f"ds={d}") for d in YEAR]
    rows = 0
    for day, uri in zip(YEAR, uris, strict=True):
        batch = read_batch(root.read_bytes(uri), CFG)
        assert (batch["time"].dt.date == day).all(), uri
        rows += len(batch)
    assert rows == 8645
    # read back as ingestion stores it: the same rows and types as the adapter's frame
    back = read_batch(root.read_bytes(uris[0]), CFG)
    pd.testing.assert_frame_equal(back, bikeshare.day_frame(YEAR[0]), check_dtype=True)


def test_days_land_under_a_configured_landing_uri():
    """``source.landing_uri`` may be any fsspec folder: the adapter writes the same layout there."""
    base = f"memory://airloop-test-{uuid.uuid4().hex}/feeds"
    cfg = CFG.model_copy(update={"source": CFG.source.model_copy(update={"landing_uri": base})})
    day = dt.date(2011, 3, 1)
    (uri,) = bikeshare.land_days(base, cfg.name, [day], cfg.source.file_name)
    assert uri == landing_uri(cfg, DataRoot("/unused"), f"ds={day}") == f"{base}/bikeshare/ds=2011-03-01/bikeshare.csv"


@pytest.mark.heavy
@pytest.mark.parametrize("day", [dt.date(2011, 1, 27), dt.date(2011, 3, 1), dt.date(2011, 1, 26)], ids=str)
def test_a_landed_and_ingested_day_passes_the_suite(tmp_path, day):
    """The shortest day (8 hours), an ordinary one and the day of the year's only hour of heavy rain or snow."""
    root = DataRoot(tmp_path)
    bikeshare.land_days(root, CFG.name, [day], CFG.source.file_name)
    part = f"ds={day}"
    ingest_batch(CFG, root, partition=part, interval=Interval(None, None), run_id="test")
    outcome = validate_frame(CFG, load_partitions(root, "raw", CFG.name, (part,)).drop(columns="_partition"))
    assert outcome.success, [f.describe() for f in outcome.failures]
    # 50 of the suite and the schema, and the gate's two checks that need nothing but the rows (airloop.gate)
    assert outcome.statistics["evaluated_expectations"] == len(outcome.expectations) == 52


def test_a_broken_day_fails_the_suite():
    """A unit mix-up (temperature in degrees, not normalised) and swapped counts are stopped."""
    bad = bikeshare.day_frame(dt.date(2011, 3, 1))
    bad["temp"] = bad["temp"] * 41
    bad["bikers"], bad["registered"] = bad["registered"], bad["bikers"]
    outcome = validate_frame(CFG, read_batch(bikeshare.to_csv_bytes(bad), CFG))
    failed = {(f.expectation, f.column) for f in outcome.failures}
    assert ("expect_column_values_to_be_between", "temp") in failed
    assert any(e == "expect_column_pair_values_a_to_be_greater_than_b" for e, _ in failed), failed


def test_the_sample_cli_writes_the_first_days(tmp_path, capsys):
    out = tmp_path / "sample.csv"
    assert bikeshare.main(["sample", "--out", str(out), "--days", "3"]) == 0
    sample = read_batch(out.read_bytes(), CFG)
    assert sample["time"].dt.date.unique().tolist() == YEAR[:3]
    assert len(sample) == sum(len(bikeshare.day_frame(d)) for d in YEAR[:3])
    assert "wrote" in capsys.readouterr().out


def test_a_sample_starts_where_asked(tmp_path):
    rows = bikeshare.write_sample(tmp_path / "week.csv", 7, dt.date(2011, 4, 5))
    df = pd.read_csv(tmp_path / "week.csv")
    assert rows == len(df) and df["day"].min() == 95 and df["day"].max() == 101
    assert df["time"].str[:10].min() == "2011-04-05" and df["time"].str[:10].max() == "2011-04-11"
