"""Replay the UCI Bike Sharing hourly counts of 2011 as a daily feed: one CSV file per day into a landing area.

The data: Capital Bikeshare (Washington DC) rentals per hour with the weather and calendar of the hour,
from H. Fanaee-T and J. Gama, "Event labeling combining ensemble detectors and background knowledge",
Progress in Artificial Intelligence (2013); UCI Machine Learning Repository, "Bike Sharing",
https://doi.org/10.24432/C5W894, licensed CC BY 4.0 (redistribution and adaptation allowed with this
attribution). The 2011 rows (8,645 hours) are read from ``ISLP/data/Bikeshare.csv`` of the ISLP package
0.6.0 (BSD-style licence), installed with ``--no-deps`` from ``requirements-data.txt`` for its data files
only: the file is found with ``importlib.util.find_spec`` and no ISLP code is imported.

The file has no date column: ``day`` is the day of the year 2011 and ``hr`` the hour, so each row gets
``time`` = 2011-01-01 + (day - 1) days + hr hours, naive, read as UTC (the hours are Washington's clock
hours; the pipeline only needs them ordered and dated). A few hours are missing (the system was down):
a day has 8 to 24 rows.

It fills the landing layout that :mod:`airloop.ingest` reads (``<landing>/<model>/ds=<day>/<file_name>``),
so the model that uses it is an ordinary ``source.kind: files`` model.

CLI: ``python -m airloop.sources.bikeshare sample --out FILE [--days N]`` writes the first N days (a sample
for ``airloop model init``); ``... land --landing URI --model NAME --start DATE --days N`` lands days.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib.util
import io
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from airloop.ingest import landing_file
from airloop.storage import DataRoot, partition_key

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

YEAR = 2011
CSV_NAME = "Bikeshare.csv"
FILE_NAME = "bikeshare.csv"


def data_file() -> Path:
    """The CSV inside the installed ISLP package (located without importing it)."""
    spec = importlib.util.find_spec("ISLP")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the ISLP package (data files only) is not installed: run `make venv`, or "
            "`pip install --no-deps -r requirements-data.txt`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / CSV_NAME
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: the installed ISLP is not 0.6.0 (see requirements-data.txt)")
    return path


@functools.lru_cache(maxsize=1)
def _frame() -> pd.DataFrame:
    import pandas as pd

    df = pd.read_csv(data_file())
    start = pd.Timestamp(YEAR, 1, 1)
    df["time"] = start + pd.to_timedelta(df["day"] - 1, unit="D") + pd.to_timedelta(df["hr"], unit="h")
    df["time"] = df["time"].astype("datetime64[us]")
    return df.sort_values("time", kind="stable").reset_index(drop=True)


def frame() -> pd.DataFrame:
    """Every hour of 2011 (8,645 rows) in time order, with ``time`` (naive UTC) added; a copy."""
    return _frame().copy()


def days() -> list[dt.date]:
    """The days of 2011 that have rows (all 365)."""
    return sorted({t.date() for t in _frame()["time"]})


def day_frame(day: dt.date) -> pd.DataFrame:
    """The rows of one day (8 to 24 hours)."""
    df = _frame()
    if day.year != YEAR:
        raise ValueError(f"the bike sharing data covers {YEAR} only, not {day}")
    mask = df["day"] == day.timetuple().tm_yday
    return df.loc[mask].reset_index(drop=True)


def to_csv_bytes(df: pd.DataFrame) -> bytes:
    """A batch as the feed writes it: CSV with a header, ``time`` as ISO 8601 UTC."""
    buf = io.StringIO()
    df.to_csv(buf, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    return buf.getvalue().encode()


def land_days(landing: DataRoot | str, model: str, days: Iterable[dt.date], file_name: str = FILE_NAME) -> list[str]:
    """Write one CSV per day (atomically) into the landing layout; return the file URIs.

    :param landing: a data root (its ``landing/`` zone) or a landing folder URI (``source.landing_uri``)
    """
    writer = landing if isinstance(landing, DataRoot) else DataRoot(landing)
    uris = []
    for day in days:
        df = day_frame(day)
        uri = landing_file(landing, model, partition_key(day), file_name)
        writer.write_bytes_atomic(uri, to_csv_bytes(df))
        log.info("landed %s (%d hours)", uri, len(df))
        uris.append(uri)
    return uris


def write_sample(out: str | Path, n_days: int, start: dt.date | None = None) -> int:
    """Write ``n_days`` days from ``start`` (default the first day of the year) to ``out`` (CSV; Parquet or
    JSON lines by the suffix); return the rows."""
    df = _frame()
    first = (start or dt.date(YEAR, 1, 1)).timetuple().tm_yday
    df = df[(df["day"] >= first) & (df["day"] < first + n_days)]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif path.suffix in (".jsonl", ".ndjson"):
        path.write_text(df.to_json(orient="records", lines=True, date_format="iso"))
    else:
        path.write_bytes(to_csv_bytes(df))
    return len(df)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m airloop.sources.bikeshare",
        description="The UCI Bike Sharing hours of 2011 (CC BY 4.0) as a daily feed",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("sample", help="write days to one file (a sample for `airloop model init`, or traffic)")
    sp.add_argument("--out", required=True, help="the file (.csv; .parquet or .jsonl by suffix)")
    sp.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(YEAR, 1, 1), help="the first day")
    sp.add_argument("--days", type=int, default=7, help="how many days")
    lp = sub.add_parser("land", help="land days as <landing>/<model>/ds=<day>/<file-name>")
    lp.add_argument("--landing", required=True, help="a landing folder (any fsspec URI)")
    lp.add_argument("--model", default="bikeshare", help="the model folder under the landing folder")
    lp.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(YEAR, 1, 1), help="the first day")
    lp.add_argument("--days", type=int, default=7, help="how many days")
    lp.add_argument("--file-name", default=FILE_NAME, help="the file name the model's source.file_name expects")
    args = ap.parse_args(argv)
    if args.days < 1:
        ap.error("--days must be at least 1")
    if args.command == "sample":
        rows = write_sample(args.out, args.days, args.start)
        print(f"wrote {rows} rows ({args.days} days from {args.start}) to {args.out}")
        return 0
    wanted = [args.start + dt.timedelta(days=i) for i in range(args.days)]
    outside = [d for d in wanted if d.year != YEAR]
    if outside:
        ap.error(f"the data covers {YEAR} only; {outside[0]} is outside it")
    for uri in land_days(args.landing, args.model, wanted, args.file_name):
        print(uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
