from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from airloop import ingest
from airloop.errors import BatchFormatError, BatchNotFoundError
from airloop.ingest import Interval, ingest_batch, read_batch
from airloop.sources import nycflights13
from airloop.storage import MANIFEST, content_hash, read_parquet_bytes

pytestmark = pytest.mark.unit

DAY = dt.date(2013, 1, 3)
PART = "ds=2013-01-03"
IV = Interval("2013-01-03T00:00:00+00:00", "2013-01-04T00:00:00+00:00")


def _land(root, cfg, corrupt=None):
    return nycflights13.replay_days(
        root, cfg.name, [DAY], file_name=cfg.source.file_name, corruptions={DAY: corrupt} if corrupt else None
    )[0]


def test_ingest_writes_partition_with_manifest(data_root, cfg):
    src = _land(data_root, cfg)
    m = ingest_batch(cfg, data_root, partition=PART, interval=IV, run_id="r1")
    raw = data_root.partition_uri("raw", cfg.name, PART)
    assert m["uri"] == raw
    manifest = data_root.read_json(f"{raw}/{MANIFEST}")
    df = read_parquet_bytes(data_root.read_bytes(f"{raw}/data.parquet"))
    expected = nycflights13.day_frame(DAY)
    assert manifest["rows"] == len(df) == len(expected) == 914
    assert manifest["source_uri"] == src
    assert manifest["data_interval"] == {"start": IV.start, "end": IV.end}
    assert manifest["content_hash"] == content_hash(df)
    assert [c["name"] for c in manifest["columns"]] == list(expected.columns)
    assert manifest["run_id"] == "r1"
    # the data survives the CSV round trip exactly (timestamps as naive UTC)
    pd.testing.assert_series_equal(df["time_hour"], expected["time_hour"].dt.tz_localize(None), check_dtype=False)

    def norm(f):  # parquet reads missing text as None, pandas' CSV reader as NaN
        f = f.drop(columns="time_hour")
        return f.astype(object).where(f.notna(), None)

    pd.testing.assert_frame_equal(norm(df), norm(expected))


def test_rerun_replaces_partition_without_duplicates(data_root, cfg):
    _land(data_root, cfg)
    first = ingest_batch(cfg, data_root, partition=PART, interval=IV, run_id="r1")
    second = ingest_batch(cfg, data_root, partition=PART, interval=IV, run_id="r2")
    raw = data_root.partition_uri("raw", cfg.name, PART)
    df = read_parquet_bytes(data_root.read_bytes(f"{raw}/data.parquet"))
    assert len(df) == first["rows"] == second["rows"]
    assert first["content_hash"] == second["content_hash"]
    assert data_root.list_partitions("raw", cfg.name) == [raw]


def test_source_uri_overrides_landing(data_root, cfg):
    # elsewhere in the model's landing folder: a source_uri must lie inside it (airloop.confine)
    other = Path(data_root.landing_folder(cfg.name)) / "deliveries" / "elsewhere.csv"
    other.parent.mkdir(parents=True)
    other.write_bytes(nycflights13.to_csv_bytes(nycflights13.day_frame(dt.date(2013, 2, 1))))
    m = ingest_batch(
        cfg,
        data_root,
        partition="run=webhook-1",
        interval=Interval(None, None),
        run_id="webhook-1",
        source_uri=str(other),
    )
    assert m["source_uri"] == str(other)
    assert m["rows"] == len(nycflights13.day_frame(dt.date(2013, 2, 1)))


def test_missing_batch_is_retryable_not_a_data_problem(data_root, cfg):
    with pytest.raises(BatchNotFoundError, match="has not delivered it yet"):
        ingest_batch(cfg, data_root, partition=PART, interval=IV, run_id="r1")


@pytest.mark.parametrize("kind", ["empty_file", "not_csv"])
def test_unreadable_batch_goes_to_quarantine(data_root, cfg, kind):
    src = _land(data_root, cfg, corrupt=kind)
    with pytest.raises(BatchFormatError, match="could not be read") as err:
        ingest_batch(cfg, data_root, partition=PART, interval=IV, run_id="r1")
    q = data_root.partition_uri("quarantine", cfg.name, PART)
    assert q in str(err.value)
    assert data_root.read_bytes(f"{q}/received.csv") == data_root.read_bytes(src)  # kept as received
    assert "FAILED" in data_root.read_bytes(f"{q}/report.html").decode()
    assert data_root.read_json(f"{q}/validation.json")["success"] is False
    assert data_root.list_partitions("raw", cfg.name) == []


def test_oversized_batch_is_refused(data_root, cfg):
    _land(data_root, cfg)
    small = cfg.model_copy(update={"source": cfg.source.model_copy(update={"max_bytes": 1000})})
    with pytest.raises(BatchFormatError, match="over the configured source.max_bytes"):
        ingest_batch(small, data_root, partition=PART, interval=IV, run_id="r1")


def test_crash_while_writing_keeps_previous_partition(data_root, cfg, monkeypatch):
    _land(data_root, cfg)
    good = ingest_batch(cfg, data_root, partition=PART, interval=IV, run_id="r1")

    def boom(df):
        raise MemoryError("killed mid-write")

    monkeypatch.setattr(ingest, "_parquet_bytes", boom)
    with pytest.raises(MemoryError):
        ingest_batch(cfg, data_root, partition=PART, interval=IV, run_id="r2")
    raw = data_root.partition_uri("raw", cfg.name, PART)
    assert data_root.read_json(f"{raw}/{MANIFEST}")["run_id"] == "r1"
    assert data_root.read_json(f"{raw}/{MANIFEST}")["content_hash"] == good["content_hash"]


def test_wrong_types_survive_into_parquet_for_the_gate(cfg):
    df = read_batch(nycflights13.corrupt(nycflights13.day_frame(DAY), "wrong_types"), cfg)
    assert df["distance"].dtype == object
    assert set(df["distance"]) == {"far", "near"}


def test_unparseable_timestamps_are_kept_as_text(cfg):
    frame = nycflights13.day_frame(DAY)
    frame["time_hour"] = "not a time"
    df = read_batch(nycflights13.to_csv_bytes(frame), cfg)
    assert df["time_hour"].dtype == object
