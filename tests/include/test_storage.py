from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from airloop.storage import MANIFEST, DataRoot, content_hash, partition_key

pytestmark = pytest.mark.unit


def _files(root: DataRoot) -> list[str]:
    base = root.uri
    return sorted(str(p.relative_to(base)) for p in __import__("pathlib").Path(base).rglob("*") if p.is_file())


def test_partition_key_prefers_interval_then_run_id():
    assert partition_key(dt.datetime(2013, 1, 5, tzinfo=dt.UTC), "x") == "ds=2013-01-05"
    assert partition_key(None, "manual__2026-01-01T00:00:00+00:00") == "run=manual__2026-01-01T00_00_00+00_00"
    with pytest.raises(ValueError):
        partition_key(None, None)


def test_write_partition_replaces_atomically(data_root):
    uri = data_root.partition_uri("raw", "m", "ds=2013-01-01")
    data_root.write_partition(uri, {"a.txt": b"one"}, {"v": 1})
    data_root.write_partition(uri, {"b.txt": b"two"}, {"v": 2})
    assert data_root.read_json(f"{uri}/{MANIFEST}") == {"v": 2}
    assert _files(data_root) == ["raw/m/ds=2013-01-01/_manifest.json", "raw/m/ds=2013-01-01/b.txt"]
    assert data_root.list_partitions("raw", "m") == [uri]


def test_crash_mid_write_leaves_old_partition_and_no_debris(data_root):
    uri = data_root.partition_uri("raw", "m", "ds=2013-01-01")
    data_root.write_partition(uri, {"a.txt": b"good"}, {"v": 1})
    with pytest.raises(RuntimeError, match="disk full"):
        with data_root.atomic_dir(uri) as tmp:
            data_root.fs.pipe_file(f"{tmp}/a.txt", b"half")
            raise RuntimeError("disk full")
    assert data_root.read_bytes(f"{uri}/a.txt") == b"good"
    assert _files(data_root) == ["raw/m/ds=2013-01-01/_manifest.json", "raw/m/ds=2013-01-01/a.txt"]


def test_readers_ignore_incomplete_partitions(data_root):
    (__import__("pathlib").Path(data_root.uri) / "raw/m/ds=2013-01-02").mkdir(parents=True)  # no manifest
    (__import__("pathlib").Path(data_root.uri) / "raw/m/.tmp-ds=2013-01-03-x").mkdir(parents=True)
    good = data_root.partition_uri("raw", "m", "ds=2013-01-01")
    data_root.write_partition(good, {}, {})
    assert data_root.list_partitions("raw", "m") == [good]


def test_write_bytes_atomic_overwrites(data_root):
    uri = f"{data_root.uri}/landing/m/ds=1/f.csv"
    data_root.write_bytes_atomic(uri, b"1")
    data_root.write_bytes_atomic(uri, b"22")
    assert data_root.read_bytes(uri) == b"22"
    assert _files(data_root) == ["landing/m/ds=1/f.csv"]


def test_unknown_zone_is_refused(data_root):
    with pytest.raises(ValueError, match="unknown zone"):
        data_root.partition_uri("tmp", "m", "ds=1")


def test_content_hash_is_stable_and_sensitive():
    a = pd.DataFrame({"x": [1, 2, 3], "y": ["a", "b", None]})
    assert content_hash(a) == content_hash(a.copy())
    assert content_hash(a) != content_hash(a.assign(x=[1, 2, 4]))
    assert content_hash(a) != content_hash(a.astype({"x": "float64"}))
    assert content_hash(a) != content_hash(a.rename(columns={"y": "z"}))
    assert content_hash(a.iloc[:0]).startswith("sha256:")


def test_memory_filesystem_root_works_like_local():
    root = DataRoot("memory://airloop-test-root")
    uri = root.partition_uri("raw", "m", "ds=2013-01-01")
    root.write_partition(uri, {"a.txt": b"x"}, {"v": 1})
    root.write_partition(uri, {"a.txt": b"y"}, {"v": 2})
    assert root.read_bytes(f"{uri}/a.txt") == b"y"
    assert root.list_partitions("raw", "m") == [uri]
