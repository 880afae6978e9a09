"""The gate's own checks, each on real data: what careless upstreams break that an expectation suite misses.

Each test drives a real day of a shipped model's feed through the whole gate (ingest, then validation) with
one thing broken the way an upstream breaks it, and asserts the verdict, the figures in the report and
that the bytes received are kept in quarantine.
"""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from airloop import quarantine
from airloop.config import get_pipeline
from airloop.errors import BatchFormatError, BatchNotFoundError, BatchValidationError
from airloop.gate import Announcement, announcements_from_conf
from airloop.ingest import Interval, ingest_batch, landing_uri
from airloop.sources import bikeshare, nycflights13
from airloop.storage import MANIFEST, QUARANTINE_REPORT, VALIDATION_RESULT, partition_key, sha256_bytes

pytestmark = pytest.mark.unit

DAY = dt.date(2013, 1, 3)
PART = partition_key(DAY)


def _interval(day: dt.date) -> Interval:
    """The data interval the scheduler gives the run of ``day`` (a UTC day: ``schedule.timezone``)."""
    return Interval(f"{day}T00:00:00+00:00", f"{day + dt.timedelta(days=1)}T00:00:00+00:00")


def _land(root, cfg, payload: bytes, day: dt.date = DAY) -> str:
    uri = landing_uri(cfg, root, partition_key(day))
    root.write_bytes_atomic(uri, payload)
    return uri


def _gate(root, cfg, day: dt.date = DAY, **kwargs):
    """The whole gate on the landed file of ``day``: ingest, then validate (publish or quarantine)."""
    ingest_batch(cfg, root, partition=partition_key(day), interval=_interval(day), run_id=f"r-{day}", **kwargs)
    return quarantine.validate_partition(cfg, root, partition_key(day))


def _check(root, cfg, name: str, day: dt.date = DAY, zone: str = "quarantine") -> dict:
    """One check's entry in the stored validation result (beside the batch in quarantine, or under reports/)."""
    uri = (
        f"{root.quarantine(cfg.name, partition_key(day))}/{VALIDATION_RESULT}"
        if zone == "quarantine"
        else root.validation_result(cfg.name, partition_key(day))
    )
    found = [e for e in root.read_json(uri)["expectations"] if e["expectation"] == name]
    assert len(found) == 1, f"{name} not in the report"
    return found[0]


def _with(cfg, **sections):
    """``cfg`` with fields of some sections replaced, e.g. ``_with(cfg, source={"format": "jsonl"})``."""
    attr = {"schema": "data_schema"}
    update = {attr.get(k, k): getattr(cfg, attr.get(k, k)).model_copy(update=v) for k, v in sections.items()}
    return cfg.model_copy(update=update)


# -- a real day passes every check ------------------------------------------------------------------
GATE_CHECKS = {
    "expect_row_key_to_be_unique",
    "expect_table_columns_to_be_declared",
    "expect_event_time_in_data_interval",
    "expect_row_count_relative_to_recent_batches",
}


def test_a_real_flights_day_passes_every_gate_check(data_root, cfg):
    """time_hour is UTC but a day of flights is a local day at the New York airports: 19:00 local is the
    next UTC day, so the interval is read in validation.event_time_timezone."""
    frame = nycflights13.day_frame(DAY)
    assert frame["time_hour"].max() >= pd.Timestamp(f"{DAY + dt.timedelta(days=1)}T00:00:00Z")  # past UTC midnight
    _land(data_root, cfg, nycflights13.to_csv_bytes(frame))
    out = _gate(data_root, cfg)
    assert out["validation"]["failed"] == 0
    for name in GATE_CHECKS:
        assert _check(data_root, cfg, name, zone="reports")["success"] is True
    report = data_root.read_bytes(out["report_uri"]).decode()
    assert all(name in report for name in GATE_CHECKS)


def test_a_real_bikeshare_day_passes_every_gate_check(data_root):
    bcfg = get_pipeline("bikeshare")
    day = dt.date(2011, 3, 13)
    bikeshare.land_days(data_root, bcfg.name, [day], bcfg.source.file_name)
    assert _gate(data_root, bcfg, day)["validation"]["failed"] == 0
    assert _check(data_root, bcfg, "expect_event_time_in_data_interval", day, zone="reports")["success"] is True


# -- 1. row key -------------------------------------------------------------------------------------
def test_every_row_twice_fails_on_the_row_key(data_root, cfg):
    frame = nycflights13.day_frame(DAY)
    payload = nycflights13.to_csv_bytes(pd.concat([frame, frame]))
    _land(data_root, cfg, payload)
    with pytest.raises(BatchValidationError) as err:
        _gate(data_root, cfg)
    check = _check(data_root, cfg, "expect_row_key_to_be_unique")
    assert check["success"] is False
    assert check["unexpected_count"] == len(frame) and check["unexpected_percent"] == pytest.approx(50.0)
    first = {c: frame[c].iloc[0] for c in cfg.data_schema.key_columns}
    assert check["sample"][0] == {k: (v.item() if hasattr(v, "item") else v) for k, v in first.items()}
    msg = str(err.value)
    assert f'FAILED row_key_to_be_unique {{"columns": {json.dumps(list(cfg.data_schema.key_columns))}}}' in msg
    assert "schema.key_columns" in msg  # what to do when the key itself is wrong
    q = data_root.quarantine(cfg.name, PART)
    assert data_root.read_bytes(f"{q}/received.csv") == payload


# -- 2. unknown columns -----------------------------------------------------------------------------
def test_an_unknown_column_fails_unless_the_config_allows_extras(data_root, cfg):
    _land(data_root, cfg, nycflights13.to_csv_bytes(nycflights13.day_frame(DAY).assign(gate_id="B12")))
    with pytest.raises(BatchValidationError, match="allow_extra_columns"):
        _gate(data_root, cfg)
    check = _check(data_root, cfg, "expect_table_columns_to_be_declared")
    assert check["success"] is False and check["observed"] == {"undeclared": ["gate_id"]}
    relaxed = _with(cfg, schema={"allow_extra_columns": True})
    assert _gate(data_root, relaxed)["validation"]["failed"] == 0


# -- 3. event time against the data interval ---------------------------------------------------------
def test_a_days_file_holding_the_next_days_rows_fails(data_root, cfg):
    other = nycflights13.day_frame(DAY + dt.timedelta(days=1))
    _land(data_root, cfg, nycflights13.to_csv_bytes(other))  # the file of 01-03 holds the flights of 01-04
    with pytest.raises(BatchValidationError) as err:
        _gate(data_root, cfg)
    check = _check(data_root, cfg, "expect_event_time_in_data_interval")
    assert check["success"] is False and check["unexpected_count"] == len(other)
    assert check["column"] == cfg.event_time
    assert check["kwargs"]["timezone"] == "America/New_York"
    seen = check["observed"]
    assert seen["min"] == "2013-01-04T10:00:00"
    assert seen["max"] == other["time_hour"].max().strftime("%Y-%m-%dT%H:%M:%S")
    assert seen["after"] == len(other) and seen["before"] == 0
    assert "outside the data interval" in str(err.value)


def test_a_few_rows_of_the_previous_day_fail_the_batch(data_root, cfg):
    frame = nycflights13.day_frame(DAY)
    stray = nycflights13.day_frame(DAY - dt.timedelta(days=1)).tail(7)
    _land(data_root, cfg, nycflights13.to_csv_bytes(pd.concat([stray, frame])))
    with pytest.raises(BatchValidationError):
        _gate(data_root, cfg)
    check = _check(data_root, cfg, "expect_event_time_in_data_interval")
    assert check["unexpected_count"] == 7 and check["observed"]["before"] == 7


# -- 4. a file cut in its last row ------------------------------------------------------------------
def _cut_csv(full: bytes, how: str) -> bytes:
    last = full.rstrip(b"\n").rfind(b"\n") + 1  # where the last row starts
    row = full[last:].rstrip(b"\n")
    comma = row.index(b",", len(row) // 2)
    return {
        "mid_row": full[: last + len(row) // 2 + 1],
        "at_a_field_boundary": full[: last + comma],
        "short_last_row_with_newline": full[: last + comma] + b"\n",
        "whole_rows_without_final_newline": full[:-1],
    }[how]


@pytest.mark.parametrize(
    "how", ["mid_row", "at_a_field_boundary", "short_last_row_with_newline", "whole_rows_without_final_newline"]
)
def test_a_csv_cut_in_its_last_row_is_unreadable(data_root, cfg, how):
    payload = _cut_csv(nycflights13.to_csv_bytes(nycflights13.day_frame(DAY)), how)
    _land(data_root, cfg, payload)
    with pytest.raises(BatchFormatError, match="not a readable csv file") as err:
        ingest_batch(cfg, data_root, partition=PART, interval=_interval(DAY), run_id="r1")
    assert "cut" in str(err.value)
    q = data_root.quarantine(cfg.name, PART)
    assert data_root.read_bytes(f"{q}/received.csv") == payload  # kept as received
    assert data_root.read_json(f"{q}/{MANIFEST}")["source_sha256"] == sha256_bytes(payload)
    assert data_root.list_partitions("raw", cfg.name) == []


def test_a_short_row_in_the_middle_is_unreadable(cfg):
    from airloop.ingest import read_batch

    lines = nycflights13.to_csv_bytes(nycflights13.day_frame(DAY)).split(b"\n")
    lines[10] = lines[10].rsplit(b",", 3)[0]
    with pytest.raises(BatchFormatError, match="line 11 has 25 fields, the header 28"):
        read_batch(b"\n".join(lines), cfg)


def test_a_jsonl_file_without_its_final_newline_is_unreadable(data_root, cfg):
    jcfg = _with(cfg, source={"format": "jsonl", "file_name": "flights.jsonl"})
    full = nycflights13.day_frame(DAY).to_json(orient="records", lines=True, date_format="iso").encode()
    payload = full.rstrip(b"\n")  # the last object is whole: only the missing newline shows the cut
    _land(data_root, jcfg, payload)
    with pytest.raises(BatchFormatError, match="not a readable jsonl file.*does not end with a newline"):
        ingest_batch(jcfg, data_root, partition=PART, interval=_interval(DAY), run_id="r1")
    assert data_root.read_bytes(f"{data_root.quarantine(cfg.name, PART)}/received.jsonl") == payload
    _land(data_root, jcfg, full)
    assert ingest_batch(jcfg, data_root, partition=PART, interval=_interval(DAY), run_id="r2")["rows"] == 914


# -- 5. announced rows and sha256 -------------------------------------------------------------------
def test_announced_rows_and_sha256_must_match_what_was_read(data_root, cfg):
    payload = nycflights13.to_csv_bytes(nycflights13.day_frame(DAY))
    _land(data_root, cfg, payload)
    by = "webhook flight-delays-landing delivery msg_1"
    wrong = Announcement(by=by, rows=915, sha256=sha256_bytes(b"another file"))
    with pytest.raises(BatchValidationError) as err:
        _gate(data_root, cfg, announced=[wrong])
    rows = _check(data_root, cfg, "expect_announced_row_count_to_match")
    assert rows["success"] is False and rows["observed"] == {"announced": 915, "read": 914}
    sha = _check(data_root, cfg, "expect_announced_sha256_to_match")
    assert sha["success"] is False
    assert sha["observed"] == {"announced": sha256_bytes(b"another file"), "received": sha256_bytes(payload)}
    assert by in str(err.value) and "re-deliver" in str(err.value)
    report = data_root.read_bytes(f"{data_root.quarantine(cfg.name, PART)}/{QUARANTINE_REPORT}").decode()
    assert sha256_bytes(b"another file") in report and sha256_bytes(payload) in report
    assert data_root.read_bytes(f"{data_root.quarantine(cfg.name, PART)}/received.csv") == payload

    right = Announcement(by=by, rows=914, sha256=sha256_bytes(payload))
    assert _gate(data_root, cfg, announced=[right])["validation"]["failed"] == 0


def test_the_webhook_announcement_in_the_run_conf_is_read():
    conf = {
        "source_uri": "/x/flights.csv",
        "webhook": {"source": "s", "delivery_id": "d1", "rows": 3, "sha256": "ab" * 32, "received_at": "t"},
    }
    assert announcements_from_conf(conf) == [Announcement(by="webhook s delivery d1", rows=3, sha256="ab" * 32)]
    assert announcements_from_conf({"webhook": {"source": "s", "delivery_id": "d1"}}) == []
    assert announcements_from_conf({}) == []
    with pytest.raises(BatchFormatError, match="webhook.rows"):
        announcements_from_conf({"webhook": {"source": "s", "delivery_id": "d", "rows": "many"}})


def test_the_ingest_operator_checks_the_webhook_announcement(data_root, cfg):
    from airflow.sdk.exceptions import AirflowFailException

    from airloop_airflow.operators.ingest import BatchIngestOperator, BatchValidationOperator

    payload = nycflights13.to_csv_bytes(nycflights13.day_frame(DAY))
    _land(data_root, cfg, payload)

    class Run:
        conf = {"webhook": {"source": "s", "delivery_id": "d1", "rows": 10, "sha256": sha256_bytes(payload)}}

    start = pd.Timestamp(f"{DAY}T00:00:00Z").to_pydatetime()
    ctx = {
        "run_id": "webhook__s__d1",
        "data_interval_start": start,
        "data_interval_end": start + dt.timedelta(days=1),
        "dag_run": Run(),
    }
    out = BatchIngestOperator(task_id="ingest_batch", model=cfg.name, data_root=data_root.uri).execute(ctx)
    assert set(out) == {"uri", "partition", "rows", "content_hash", "source_uri"}  # XCom stays small

    class TI:
        def xcom_push(self, key, value):
            pass

    with pytest.raises(AirflowFailException, match="announced_row_count_to_match"):
        BatchValidationOperator(task_id="validate_batch", model=cfg.name, data_root=data_root.uri).execute(
            {**ctx, "ti": TI()}
        )


def test_a_sidecar_manifest_is_the_landing_mark_and_its_announcement_is_checked(data_root, cfg):
    mcfg = _with(cfg, source={"manifest_file": "_landed.json"})
    payload = nycflights13.to_csv_bytes(nycflights13.day_frame(DAY))
    src = _land(data_root, mcfg, payload)
    with pytest.raises(BatchNotFoundError, match="_landed.json"):  # written last by the producer: not landed yet
        ingest_batch(mcfg, data_root, partition=PART, interval=_interval(DAY), run_id="r1")
    sidecar = src.rsplit("/", 1)[0] + "/_landed.json"
    data_root.write_bytes_atomic(sidecar, json.dumps({"rows": 900, "sha256": sha256_bytes(payload)}).encode())
    with pytest.raises(BatchValidationError, match="announced_row_count_to_match"):
        _gate(data_root, mcfg)
    assert _check(data_root, mcfg, "expect_announced_row_count_to_match")["kwargs"]["announced_by"] == (
        f"manifest {sidecar}"
    )
    data_root.write_bytes_atomic(sidecar, json.dumps({"rows": 914, "sha256": sha256_bytes(payload)}).encode())
    assert _gate(data_root, mcfg)["validation"]["failed"] == 0


# -- 6. min_rows relative to recent batches --------------------------------------------------------
def test_a_batch_far_below_the_recent_median_fails(data_root, cfg):
    history = [dt.date(2013, 1, 7), dt.date(2013, 1, 8), dt.date(2013, 1, 9)]
    for day in history:
        _land(data_root, cfg, nycflights13.to_csv_bytes(nycflights13.day_frame(day)), day)
        _gate(data_root, cfg, day)
    day = dt.date(2013, 1, 10)
    small = nycflights13.day_frame(day).head(300)  # well-formed, above min_rows: a partial export
    assert 300 > cfg.validation.min_rows
    _land(data_root, cfg, nycflights13.to_csv_bytes(small), day)
    with pytest.raises(BatchValidationError, match="row_count_relative_to_recent_batches"):
        _gate(data_root, cfg, day)
    check = _check(data_root, cfg, "expect_row_count_relative_to_recent_batches", day)
    counts = sorted(len(nycflights13.day_frame(d)) for d in history)
    assert check["observed"] == {
        "rows": 300,
        "recent_median": counts[1],
        "floor": counts[1] * cfg.validation.min_rows_relative,
        "recent_batches": 3,
    }


def test_without_history_only_the_absolute_min_rows_applies(data_root, cfg):
    small = nycflights13.day_frame(DAY).head(300)
    _land(data_root, cfg, nycflights13.to_csv_bytes(small))
    assert _gate(data_root, cfg)["validation"]["failed"] == 0
    check = _check(data_root, cfg, "expect_row_count_relative_to_recent_batches", zone="reports")
    assert check["success"] is True and check["observed"]["recent_batches"] == 0


# -- 7. the bytes received are kept at every stage ---------------------------------------------------
def test_a_batch_failing_validation_keeps_the_received_bytes(data_root, cfg):
    payload = nycflights13.corrupt(nycflights13.day_frame(DAY), "out_of_range")
    _land(data_root, cfg, payload)
    with pytest.raises(BatchValidationError) as err:
        _gate(data_root, cfg)
    q = data_root.quarantine(cfg.name, PART)
    assert data_root.read_bytes(f"{q}/received.csv") == payload
    manifest = data_root.read_json(f"{q}/{MANIFEST}")
    assert manifest["received_file"] == "received.csv" and manifest["source_sha256"] == sha256_bytes(payload)
    assert "received.csv" in str(err.value)


def test_release_publishes_the_received_bytes_with_the_batch(data_root, cfg):
    payload = nycflights13.to_csv_bytes(nycflights13.day_frame(DAY))
    _land(data_root, cfg, payload)
    strict = _with(cfg, validation={"min_rows": 10_000})
    with pytest.raises(BatchValidationError):
        _gate(data_root, strict)
    out = quarantine.release(cfg, data_root, PART, by="oncall")
    assert data_root.read_bytes(f"{out['uri']}/received.csv") == payload
    assert data_root.read_json(f"{out['uri']}/{MANIFEST}")["received_file"] == "received.csv"


# -- the config's knobs are checked where they are written --------------------------------------------
@pytest.mark.parametrize(
    ("section", "update", "message"),
    [
        ("validation", {"event_time_timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ("validation", {"min_rows_relative": 1.5}, "less than or equal to 1"),
        ("source", {"manifest_file": "../x.json"}, "should match pattern"),
        ("source", {"manifest_file": "flights.csv"}, "another file than file_name"),
    ],
)
def test_gate_settings_are_validated_with_their_field_named(cfg, section, update, message):
    from pydantic import ValidationError

    from airloop.config import PipelineConfig

    doc = cfg.model_dump(by_alias=True)
    doc[section] |= update
    with pytest.raises(ValidationError, match=message) as err:
        PipelineConfig.model_validate(doc)
    assert section in str(err.value)
