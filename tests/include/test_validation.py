from __future__ import annotations

import datetime as dt

import pytest

from airloop.ingest import read_batch
from airloop.sources import nycflights13
from airloop.validation import render_html_report, validate_frame

pytestmark = pytest.mark.unit

# One day a month, the blizzard (most cancellations), and the year's last full-weather day.
REAL_DAYS = [dt.date(2013, m, 1) for m in range(1, 13)] + [dt.date(2013, 2, 9), dt.date(2013, 12, 30)]


def _batch(cfg, day, corrupt=None):
    frame = nycflights13.day_frame(day)
    data = nycflights13.corrupt(frame, corrupt) if corrupt else nycflights13.to_csv_bytes(frame)
    return read_batch(data, cfg)


@pytest.mark.heavy
@pytest.mark.parametrize("day", REAL_DAYS, ids=str)
def test_real_days_pass(cfg, day):
    outcome = validate_frame(cfg, _batch(cfg, day))
    assert outcome.success, [f.describe() for f in outcome.failures]
    assert outcome.rows > 600
    assert outcome.statistics["evaluated_expectations"] == len(outcome.expectations) > 60


def test_day_without_weather_is_caught(cfg):
    """2013-12-31 has no weather rows at all in nycflights13: an upstream gap the gate must stop."""
    outcome = validate_frame(cfg, _batch(cfg, dt.date(2013, 12, 31)))
    assert not outcome.success
    failed = {(f.expectation, f.column) for f in outcome.failures}
    assert ("expect_column_values_to_not_be_null", "temp") in failed


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("null_column", {("expect_column_values_to_not_be_null", "origin")}),
        ("missing_column", {("expect_table_columns_to_match_set", None)}),
        (
            "out_of_range",
            {("expect_column_values_to_be_between", "distance"), ("expect_column_values_to_be_between", "month")},
        ),
        ("wrong_types", {("expect_column_values_to_be_in_type_list", "distance")}),
    ],
)
def test_corrupted_batches_fail_with_the_right_expectations(cfg, kind, expected):
    outcome = validate_frame(cfg, _batch(cfg, dt.date(2013, 1, 2), corrupt=kind))
    assert not outcome.success
    failed = {(f.expectation, f.column) for f in outcome.failures}
    assert expected <= failed, failed
    summary = outcome.summary()
    assert summary["failed"] == len(outcome.failures) and len(summary["failures"]) == summary["failed"]


def test_failure_description_shows_observed_values(cfg):
    outcome = validate_frame(cfg, _batch(cfg, dt.date(2013, 1, 2), corrupt="out_of_range"))
    month = next(f for f in outcome.failures if f.column == "month")
    assert month.unexpected_count == 5
    assert "5 unexpected value(s)" in month.describe() and "13" in month.describe()


def test_empty_header_only_batch_fails_row_count(cfg):
    frame = nycflights13.day_frame(dt.date(2013, 1, 2)).iloc[:0]
    outcome = validate_frame(cfg, read_batch(nycflights13.to_csv_bytes(frame), cfg))
    assert ("expect_table_row_count_to_be_between", None) in {(f.expectation, f.column) for f in outcome.failures}


def test_html_report_lists_failures_first(cfg):
    outcome = validate_frame(cfg, _batch(cfg, dt.date(2013, 1, 2), corrupt="null_column"))
    page = render_html_report(cfg, "ds=2013-01-02", outcome, {"source_uri": "<script>x</script>"})
    assert page.startswith("<!doctype html>")
    assert "FAILED" in page and "&lt;script&gt;" in page and "<script>x" not in page
    assert page.index("FAIL</td>") < page.index("pass</td>")
