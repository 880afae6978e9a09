"""Real days through the whole gate: the valid-but-unusual days of each shipped feed pass, the broken one does not.

A representative subset, in date order so that the relative row count has the history it has in production:
the first days (no history yet), storms, new destinations, daylight-saving days, missing weather, the fewest
flights of the year (Thanksgiving) and the shortest bike-sharing days, and the one really broken day
(2013-12-31: no weather at all). ``benchmarks/bench_gate_sweep.py`` sweeps every day of both feeds (the figures
are in the README); this is its CI-sized part.
"""

from __future__ import annotations

import datetime as dt

import pytest

from airloop import quarantine
from airloop.config import get_pipeline
from airloop.errors import BatchFormatError, BatchValidationError
from airloop.gate import Announcement
from airloop.ingest import Interval, ingest_batch, landing_uri
from airloop.sources import bikeshare, nycflights13
from airloop.storage import DataRoot, partition_key, sha256_bytes

pytestmark = [pytest.mark.unit, pytest.mark.heavy]


def _days(*spans: tuple[dt.date, int]) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for start, n in spans for i in range(n)]


FLIGHT_DAYS = _days(
    (dt.date(2013, 1, 1), 3),  # the first days: no history
    (dt.date(2013, 2, 7), 4),  # the blizzard (02-08, 02-09: over half the flights cancelled)
    (dt.date(2013, 3, 1), 1),  # a new destination (CHO)
    (dt.date(2013, 3, 10), 1),  # daylight saving time starts: a 23-hour local day
    (dt.date(2013, 5, 16), 1),  # two new destinations
    (dt.date(2013, 8, 22), 1),  # weather missing on 15 % of rows
    (dt.date(2013, 11, 3), 1),  # daylight saving time ends: a 25-hour local day
    (dt.date(2013, 11, 21), 9),  # Thanksgiving (11-28, the fewest flights) and the day after
    (dt.date(2013, 12, 17), 1),  # pressure missing on 73 % of rows
    (dt.date(2013, 12, 30), 2),  # the last day with weather, and 12-31 without any
)
BIKE_DAYS = _days(
    (dt.date(2011, 1, 15), 13),  # 01-18: 12 hours; 01-26: heavy snow, 16 hours; 01-27: 8 hours
    (dt.date(2011, 3, 13), 1),  # daylight saving time starts
    (dt.date(2011, 8, 26), 3),  # hurricane Irene: 17-18 hours
    (dt.date(2011, 11, 24), 1),  # a holiday
)


def _land(cfg, root, day):
    if cfg.source.kind == "replay":
        nycflights13.replay_days(root, cfg.name, [day], file_name=cfg.source.file_name)
        return len(nycflights13.day_frame(day))
    bikeshare.land_days(root, cfg.name, [day], cfg.source.file_name)
    return len(bikeshare.day_frame(day))


def _sweep(cfg, root, days) -> dict[dt.date, list[str]]:
    """Each day landed, announced as a webhook delivery announces it, and gated; the refused days' failures."""
    refused = {}
    for day in days:
        rows = _land(cfg, root, day)
        payload = root.read_bytes(landing_uri(cfg, root, partition_key(day)))
        hook = Announcement(by="webhook sweep", rows=rows, sha256=sha256_bytes(payload))
        interval = Interval(f"{day}T00:00:00+00:00", f"{day + dt.timedelta(days=1)}T00:00:00+00:00")
        try:
            ingest_batch(cfg, root, partition=partition_key(day), interval=interval, run_id="sweep", announced=[hook])
            quarantine.validate_partition(cfg, root, partition_key(day))
        except BatchFormatError as e:
            refused[day] = [str(e)]
        except BatchValidationError as e:
            refused[day] = e.summary["failures"]
    return refused


def test_real_flight_days_pass_and_the_day_without_weather_is_refused(tmp_path):
    cfg = get_pipeline("flight_delays")
    refused = _sweep(cfg, DataRoot(tmp_path), FLIGHT_DAYS)
    assert set(refused) == {dt.date(2013, 12, 31)}, refused
    assert any(f.startswith("column_values_to_not_be_null on 'temp'") for f in refused[dt.date(2013, 12, 31)])


def test_real_bikeshare_days_pass(tmp_path):
    cfg = get_pipeline("bikeshare")
    assert _sweep(cfg, DataRoot(tmp_path), BIKE_DAYS) == {}
