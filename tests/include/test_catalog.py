from __future__ import annotations

import datetime as dt

import pytest

from airloop.catalog import stale_feature_partitions, validated_partitions
from airloop.errors import BatchValidationError
from airloop.ingest import Interval, ingest_batch
from airloop.quarantine import validate_partition
from airloop.sources import nycflights13
from airloop.storage import MANIFEST

pytestmark = pytest.mark.unit


def test_only_partitions_that_passed_for_their_current_content(data_root, cfg):
    days = [dt.date(2013, 3, 1), dt.date(2013, 3, 2), dt.date(2013, 3, 3)]
    nycflights13.replay_days(
        data_root, cfg.name, days, file_name=cfg.source.file_name, corruptions={days[1]: "out_of_range"}
    )
    for d in days:
        ingest_batch(cfg, data_root, partition=f"ds={d}", interval=Interval(None, None), run_id="r")
    validate_partition(cfg, data_root, "ds=2013-03-01")
    with pytest.raises(BatchValidationError):
        validate_partition(cfg, data_root, "ds=2013-03-02")
    # ds=2013-03-03 is ingested but not validated yet: not eligible
    assert validated_partitions(data_root, cfg.name) == ["ds=2013-03-01"]
    # re-ingested with other content and not yet re-validated: not eligible either
    raw = data_root.partition_uri("raw", cfg.name, "ds=2013-03-01")
    m = data_root.read_json(f"{raw}/{MANIFEST}")
    data_root.write_json_atomic(f"{raw}/{MANIFEST}", {**m, "content_hash": "sha256:other"})
    assert validated_partitions(data_root, cfg.name) == []


def test_stale_features(data_root, cfg):
    day = dt.date(2013, 3, 4)
    nycflights13.replay_days(data_root, cfg.name, [day], file_name=cfg.source.file_name)
    m = ingest_batch(cfg, data_root, partition="ds=2013-03-04", interval=Interval(None, None), run_id="r")
    validate_partition(cfg, data_root, "ds=2013-03-04")
    assert stale_feature_partitions(data_root, cfg.name, "v1") == ["ds=2013-03-04"]  # no features yet
    fm = {"source_content_hash": m["content_hash"], "feature_version": "v1"}
    data_root.write_partition(data_root.partition_uri("features", cfg.name, "ds=2013-03-04"), {}, fm)
    assert stale_feature_partitions(data_root, cfg.name, "v1") == []
    assert stale_feature_partitions(data_root, cfg.name, "v2") == ["ds=2013-03-04"]  # feature code changed


def test_feature_planning_keeps_only_validated_partitions(data_root, cfg):
    """What the feature task builds: conf or events, intersected with what passed the gate."""
    from types import SimpleNamespace

    from airloop_airflow.operators.features import partitions_to_build

    day = dt.date(2013, 3, 5)
    nycflights13.replay_days(data_root, cfg.name, [day], file_name=cfg.source.file_name)
    ingest_batch(cfg, data_root, partition="ds=2013-03-05", interval=Interval(None, None), run_id="r")
    validate_partition(cfg, data_root, "ds=2013-03-05")
    asset = type("AssetKey", (), {"name": "flight_delays.validated"})()  # hashable, like an Asset
    events = {
        asset: [
            SimpleNamespace(extra={"partition": "ds=2013-03-05"}),
            SimpleNamespace(extra={"partition": "ds=2013-03-09"}),
        ]
    }  # 03-09: quarantined since
    ctx = {"dag_run": SimpleNamespace(conf={}), "triggering_asset_events": events}
    assert partitions_to_build(ctx, cfg.name, data_root.uri) == ["ds=2013-03-05"]
    ctx = {"dag_run": SimpleNamespace(conf={"partitions": ["ds=2013-03-05", "ds=2013-03-09"]})}
    assert partitions_to_build(ctx, cfg.name, data_root.uri) == ["ds=2013-03-05"]
