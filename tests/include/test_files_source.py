"""The generic ``files`` source: the landing layout at any fsspec location, in csv, parquet and jsonl."""

from __future__ import annotations

import io
import uuid

import fsspec
import pandas as pd
import pytest

from airloop.config import SchemaConfig
from airloop.errors import BatchFormatError, BatchNotFoundError
from airloop.ingest import Interval, ingest_batch, landing_uri, read_batch
from airloop.storage import MANIFEST, read_parquet_bytes

pytestmark = pytest.mark.unit

PART = "ds=2024-05-01"
IV = Interval("2024-05-01T00:00:00+00:00", "2024-05-02T00:00:00+00:00")
SCHEMA = SchemaConfig(
    columns={
        "id": "int",
        "amount": "float",
        "score": "float",
        "note": "string",
        "code": "string",
        "flag": "bool",
        "observed": "timestamp",
    },
    timestamp_columns=("observed",),
)


def _frame() -> pd.DataFrame:
    """A small batch with missing values, whole-number floats, number-like text and sub-second times."""
    return pd.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "amount": [10.0, 2.0, None, 3.25],
            "score": [1.0, 2.0, 3.0, 4.0],
            "note": ["a", None, "007", "d"],
            "code": ["01", "02", "03", "10"],
            "flag": [True, False, True, False],
            "observed": pd.to_datetime(
                ["2024-05-01T08:00:00.125Z", "2024-05-01T09:30:00Z", None, "2024-05-01T23:59:59Z"],
                utc=True,
                format="ISO8601",
            ),
        }
    )


def _payloads() -> dict[str, tuple[str, bytes]]:
    """The frame as each producer would write it: name -> (declared format, bytes)."""
    df = _frame()
    parquet = io.BytesIO()
    df.to_parquet(parquet, index=False)
    return {
        "csv": ("csv", df.to_csv(index=False).encode()),
        "parquet": ("parquet", parquet.getvalue()),
        # JSON has no timestamp type: pandas writes epoch milliseconds by default, others ISO strings
        "jsonl_epoch_ms": ("jsonl", df.to_json(orient="records", lines=True).encode()),
        "jsonl_iso": ("jsonl", df.to_json(orient="records", lines=True, date_format="iso").encode()),
    }


def _feed_cfg(cfg, fmt: str, landing: str | None, file_name: str = "batch.dat"):
    source = cfg.source.model_copy(
        update={"kind": "files", "format": fmt, "file_name": file_name, "landing_uri": landing}
    )
    return cfg.model_copy(update={"source": source, "data_schema": SCHEMA})


@pytest.fixture(params=["local", "memory"])
def landing(request, tmp_path):
    """A landing folder outside the data root: a local folder, or an fsspec in-memory location."""
    if request.param == "local":
        yield str(tmp_path / "feeds")
        return
    uri = f"memory://airloop-test-{uuid.uuid4().hex}/feeds"
    yield uri
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _drop(uri: str, data: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)


def test_landing_uri_default_and_configured(cfg, data_root):
    assert landing_uri(_feed_cfg(cfg, "csv", None), data_root, PART) == (
        f"{data_root.uri}/landing/{cfg.name}/{PART}/batch.dat"
    )
    for base, expected in [
        ("s3://bucket/feeds/", "s3://bucket/feeds"),
        ("memory://x", "memory://x"),
        ("/srv/feeds", "/srv/feeds"),
    ]:
        uri = landing_uri(_feed_cfg(cfg, "csv", base), data_root, PART)
        assert uri == f"{expected}/{cfg.name}/{PART}/batch.dat"


def test_every_format_at_any_location_ingests_to_the_same_content(cfg, data_root, landing):
    hashes = {}
    for name, (fmt, payload) in _payloads().items():
        feed = _feed_cfg(cfg, fmt, landing, file_name=f"batch.{name}")
        src = f"{landing}/{cfg.name}/{PART}/batch.{name}"
        _drop(src, payload)
        m = ingest_batch(feed, data_root, partition=PART, interval=IV, run_id=f"r-{name}")
        assert m["source_uri"] == src and not src.startswith(data_root.uri)
        assert m["source_format"] == fmt and m["rows"] == 4
        hashes[name] = m["content_hash"]
    assert len(set(hashes.values())) == 1, hashes

    # what is stored: JSON/CSV/Parquet types kept, timestamps naive UTC microseconds, missing text null
    raw = data_root.partition_uri("raw", cfg.name, PART)
    stored = read_parquet_bytes(data_root.read_bytes(f"{raw}/data.parquet"))
    assert data_root.read_json(f"{raw}/{MANIFEST}")["run_id"] == "r-jsonl_iso"
    assert [str(t) for t in stored.dtypes] == [
        "int64",
        "float64",
        "float64",
        "object",
        "object",
        "bool",
        "datetime64[us]",
    ]
    assert stored["note"].tolist() == ["a", None, "007", "d"]
    assert stored["code"].tolist() == ["01", "02", "03", "10"]
    sent = _frame()["observed"].dt.tz_localize(None).astype("datetime64[us]")
    pd.testing.assert_series_equal(stored["observed"], sent)


def test_jsonl_timestamps_as_epoch_ms_or_iso_strings(cfg):
    feed = _feed_cfg(cfg, "jsonl", None)
    lines = b'{"id":1,"observed":1714550400000}\n{"id":2,"observed":null}\n'
    df = read_batch(lines, feed)
    assert df["observed"].tolist()[0] == pd.Timestamp("2024-05-01T08:00:00")
    assert pd.isna(df["observed"].iloc[1]) and str(df["observed"].dtype) == "datetime64[us]"
    iso = b'{"id":1,"observed":"2024-05-01T10:00:00+02:00"}\n{"id":2,"observed":"2024-05-01T08:00:00Z"}\n'
    assert read_batch(iso, feed)["observed"].tolist() == [pd.Timestamp("2024-05-01T08:00:00")] * 2
    bad = read_batch(b'{"id":1,"observed":"yesterday"}\n', feed)
    assert bad["observed"].tolist() == ["yesterday"]  # kept as text: the gate reports it


def test_missing_file_at_a_configured_landing_is_retryable(cfg, data_root, landing):
    feed = _feed_cfg(cfg, "parquet", landing)
    with pytest.raises(BatchNotFoundError, match="has not delivered it yet") as err:
        ingest_batch(feed, data_root, partition=PART, interval=IV, run_id="r1")
    assert f"{landing}/{cfg.name}/{PART}/batch.dat" in str(err.value)


@pytest.mark.parametrize(
    ("declared", "delivered"), [("parquet", "csv"), ("jsonl", "parquet"), ("jsonl", "csv"), ("csv", "parquet")]
)
def test_wrong_format_is_quarantined_with_its_bytes(cfg, data_root, landing, declared, delivered):
    payload = _payloads()[delivered][1]
    _drop(f"{landing}/{cfg.name}/{PART}/batch.dat", payload)
    feed = _feed_cfg(cfg, declared, landing)
    with pytest.raises(BatchFormatError, match=f"not a readable {declared} file") as err:
        ingest_batch(feed, data_root, partition=PART, interval=IV, run_id="r1")
    q = data_root.partition_uri("quarantine", cfg.name, PART)
    assert q in str(err.value)
    assert data_root.read_bytes(f"{q}/received.{declared}") == payload  # as received, named by the declared format
    assert data_root.read_json(f"{q}/{MANIFEST}")["source_uri"] == f"{landing}/{cfg.name}/{PART}/batch.dat"
    assert data_root.list_partitions("raw", cfg.name) == []


def test_webhook_source_uri_wins_over_the_configured_landing(cfg, data_root, landing, tmp_path):
    fmt, payload = _payloads()["jsonl_iso"]
    elsewhere = tmp_path / "delivery.jsonl"
    elsewhere.write_bytes(payload)
    feed = _feed_cfg(cfg, fmt, landing)  # nothing at the landing: only the delivery exists
    # a source_uri outside the landing folder is read only where the model's webhook sources may point
    # (airloop.confine), with the protocols its source is configured for
    hook = feed.webhooks[0].model_copy(update={"allowed_prefixes": (str(tmp_path),)})
    protocols = tuple(dict.fromkeys(["file", fsspec.core.split_protocol(landing)[0] or "file"]))
    feed = feed.model_copy(
        update={"webhooks": (hook,), "source": feed.source.model_copy(update={"protocols": protocols})}
    )
    m = ingest_batch(
        feed,
        data_root,
        partition="run=hook-1",
        interval=Interval(None, None),
        run_id="hook-1",
        source_uri=str(elsewhere),
    )
    assert m["source_uri"] == str(elsewhere) and m["rows"] == 4


def test_parquet_named_index_is_kept_as_a_column(cfg):
    buf = io.BytesIO()
    _frame().set_index("id").to_parquet(buf)
    df = read_batch(buf.getvalue(), _feed_cfg(cfg, "parquet", None))
    assert list(df.columns) == list(_frame().columns)
    assert df["id"].tolist() == [1, 2, 3, 4]
