from __future__ import annotations

import datetime as dt

import pytest

from airloop import quarantine
from airloop.errors import BatchFormatError, BatchValidationError, QuarantineError
from airloop.ingest import Interval, ingest_batch
from airloop.sources import nycflights13
from airloop.storage import MANIFEST

pytestmark = pytest.mark.unit

DAY = dt.date(2013, 1, 4)
PART = "ds=2013-01-04"


def _ingest(root, cfg, corrupt=None, run_id="r1"):
    nycflights13.replay_days(
        root, cfg.name, [DAY], file_name=cfg.source.file_name, corruptions={DAY: corrupt} if corrupt else None
    )
    return ingest_batch(cfg, root, partition=PART, interval=Interval(str(DAY), None), run_id=run_id)


def test_passing_batch_stays_in_raw_with_a_report(data_root, cfg):
    _ingest(data_root, cfg)
    out = quarantine.validate_partition(cfg, data_root, PART)
    assert out["validation"]["failed"] == 0 and out["rows"] == 915
    assert data_root.exists(out["report_uri"]) and "PASSED" in data_root.read_bytes(out["report_uri"]).decode()
    assert quarantine.list_quarantined(data_root, [cfg.name]) == []


def test_failing_batch_moves_to_quarantine_whole(data_root, cfg):
    m = _ingest(data_root, cfg, corrupt="out_of_range")
    raw_data = data_root.read_bytes(f"{m['uri']}/data.parquet")
    with pytest.raises(BatchValidationError) as err:
        quarantine.validate_partition(cfg, data_root, PART)
    q = data_root.partition_uri("quarantine", cfg.name, PART)
    assert err.value.quarantine_uri == q
    msg = str(err.value)
    assert "expect_" not in msg.split("\n")[0]
    assert (
        "FAILED column_values_to_be_between on 'distance'" in msg
        and "FAILED column_values_to_be_between on 'month'" in msg
    )
    assert f"airloop quarantine release {cfg.name} {PART}" in msg
    assert not data_root.exists(m["uri"])  # never trained on
    assert data_root.read_bytes(f"{q}/data.parquet") == raw_data  # nothing lost
    qm = data_root.read_json(f"{q}/{MANIFEST}")
    assert qm["quarantine"]["stage"] == "validation" and qm["content_hash"] == m["content_hash"]
    [entry] = quarantine.list_quarantined(data_root, [cfg.name])
    assert (entry.partition, entry.status, entry.rows) == (PART, "quarantined", 915)


def test_reject_needs_a_reason_and_happens_once(data_root, cfg):
    _ingest(data_root, cfg, corrupt="null_column")
    with pytest.raises(BatchValidationError):
        quarantine.validate_partition(cfg, data_root, PART)
    with pytest.raises(QuarantineError, match="needs a reason"):
        quarantine.reject(data_root, cfg.name, PART, reason="  ")
    rec = quarantine.reject(data_root, cfg.name, PART, reason="producer resent", by="oncall")
    assert rec["decision"] == "rejected" and rec["by"] == "oncall"
    with pytest.raises(QuarantineError, match="already rejected"):
        quarantine.reject(data_root, cfg.name, PART, reason="again")
    assert quarantine.list_quarantined(data_root, [cfg.name], include_decided=False) == []
    assert data_root.exists(f"{data_root.partition_uri('quarantine', cfg.name, PART)}/data.parquet")


def test_release_revalidates_and_publishes(data_root, cfg):
    strict = cfg.model_copy(update={"validation": cfg.validation.model_copy(update={"min_rows": 10_000})})
    m = _ingest(data_root, cfg)
    with pytest.raises(BatchValidationError, match="table_row_count"):
        quarantine.validate_partition(strict, data_root, PART)
    # still failing under the strict suite: stays quarantined
    with pytest.raises(BatchValidationError):
        quarantine.release(strict, data_root, PART, by="t")
    assert quarantine.get_quarantined(data_root, cfg.name, PART).status == "quarantined"
    # the suite is fixed: release publishes it
    out = quarantine.release(cfg, data_root, PART, by="oncall/run1")
    assert out["uri"] == m["uri"] and out["content_hash"] == m["content_hash"]
    assert data_root.read_json(f"{m['uri']}/{MANIFEST}")["released_from_quarantine"]["by"] == "oncall/run1"
    assert quarantine.get_quarantined(data_root, cfg.name, PART).status == "released"
    with pytest.raises(QuarantineError, match="is released"):
        quarantine.release(cfg, data_root, PART, by="t")


def test_unreadable_batch_cannot_be_released(data_root, cfg):
    with pytest.raises(BatchFormatError):
        _ingest(data_root, cfg, corrupt="empty_file")
    with pytest.raises(QuarantineError, match="nothing to re-validate"):
        quarantine.release(cfg, data_root, PART, by="t")


def test_a_later_good_run_supersedes_the_quarantined_batch(data_root, cfg):
    _ingest(data_root, cfg, corrupt="wrong_types")
    with pytest.raises(BatchValidationError):
        quarantine.validate_partition(cfg, data_root, PART)
    _ingest(data_root, cfg, run_id="r2")
    quarantine.validate_partition(cfg, data_root, PART)
    entry = quarantine.get_quarantined(data_root, cfg.name, PART)
    assert entry.status == "superseded" and entry.decision["by"] == "r2"


def test_unknown_batch_error_lists_what_exists(data_root, cfg):
    with pytest.raises(QuarantineError, match="quarantined partitions: none"):
        quarantine.get_quarantined(data_root, cfg.name, "ds=2013-05-05")
