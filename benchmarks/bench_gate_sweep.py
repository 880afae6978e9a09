"""The whole gate over every real day of each shipped model's feed: its verdicts and false positives.

For each model, every day of its feed's year is landed as the producer writes it (flights: the replay adapter
``airloop.sources.nycflights13``; bike sharing: ``airloop.sources.bikeshare``), announced as a webhook delivery
announces it (the rows written and the SHA-256 of the bytes), and sent through the whole gate in date order, as
the scheduler runs it: ingest (read in the declared format, the cut-file rules), then validation (the gate's own
checks, with the history of the days published so far, and the model's Great Expectations suite), with the data
interval the scheduler gives the run of that day.

A refused day is a **false positive** unless it is really broken (``KNOWN_BROKEN``, with the reason); a known
broken day that passes is a **miss**. Valid but unusual days (storms, new destinations, missing weather, short
days) are listed with their verdicts.

Run:  .venv/bin/python benchmarks/bench_gate_sweep.py [--model NAME ...] [--days N] [--json FILE]
(about 8 minutes for both models on 2 cores; --days N sweeps the first N days only)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

#: days the gate must refuse: really broken in the published data set
KNOWN_BROKEN: dict[str, dict[dt.date, str]] = {
    "flight_delays": {
        dt.date(2013, 12, 31): "no weather rows at all in nycflights13 (its weather feed ends on 2013-12-30)",
    },
    "bikeshare": {},
}

#: valid days a careless gate refuses: their verdicts are printed
UNUSUAL: dict[str, dict[dt.date, str]] = {
    "flight_delays": {
        dt.date(2013, 2, 8): "blizzard: 51 % of flights cancelled, pressure missing on 66 % of rows",
        dt.date(2013, 2, 9): "blizzard: 57 % of flights cancelled",
        dt.date(2013, 3, 1): "new destination (CHO)",
        dt.date(2013, 3, 10): "daylight saving time starts: a 23-hour local day",
        dt.date(2013, 5, 16): "two new destinations (ACK, MVY)",
        dt.date(2013, 7, 27): "new destination (LGA)",
        dt.date(2013, 8, 22): "weather missing on 15 % of rows",
        dt.date(2013, 11, 3): "daylight saving time ends: a 25-hour local day",
        dt.date(2013, 11, 24): "new destination (LEX)",
        dt.date(2013, 11, 28): "Thanksgiving: the fewest flights of the year (634), 0.65 of the median before it",
        dt.date(2013, 12, 17): "pressure missing on 73 % of rows",
        dt.date(2013, 12, 30): "weather missing on 16 % of rows: the last day with weather",
    },
    "bikeshare": {
        dt.date(2011, 1, 18): "12 hours (system down)",
        dt.date(2011, 1, 26): "the year's only hour of heavy rain or snow; 16 hours",
        dt.date(2011, 1, 27): "the shortest day: 8 hours, 0.35 of the median before it",
        dt.date(2011, 3, 13): "daylight saving time starts",
        dt.date(2011, 8, 27): "hurricane Irene: 18 hours",
        dt.date(2011, 8, 28): "hurricane Irene: 17 hours",
        dt.date(2011, 11, 24): "a holiday (Thanksgiving)",
    },
}


@dataclass
class Verdict:
    day: str
    passed: bool
    stage: str  # published | ingest | validation
    rows: int | None
    seconds: float
    failures: list[str] = field(default_factory=list)


Landed = tuple[bytes, int]  # the bytes a producer wrote, and how many rows it wrote


def _feeds() -> dict[str, tuple[list[dt.date], Callable[[Any, Any, dt.date], Landed]]]:
    """model -> (the feed's days, a function landing one day as its producer writes it)."""
    from airloop.ingest import landing_uri
    from airloop.sources import bikeshare, nycflights13
    from airloop.storage import partition_key

    def land_flights(cfg: Any, root: Any, day: dt.date) -> Landed:
        (uri,) = nycflights13.replay_days(root, cfg.name, [day], file_name=cfg.source.file_name)
        return bytes(root.read_bytes(uri)), len(nycflights13.day_frame(day))

    def land_bikes(cfg: Any, root: Any, day: dt.date) -> Landed:
        bikeshare.land_days(root, cfg.name, [day], cfg.source.file_name)
        return bytes(root.read_bytes(landing_uri(cfg, root, partition_key(day)))), len(bikeshare.day_frame(day))

    flight_days = [dt.date(2013, 1, 1) + dt.timedelta(days=i) for i in range(365)]
    return {"flight_delays": (flight_days, land_flights), "bikeshare": (bikeshare.days(), land_bikes)}


def gate_day(cfg: Any, root: Any, day: dt.date, landed: Landed) -> Verdict:
    """One day through the whole gate, as its scheduled run with a webhook announcement would take it."""
    from airloop import quarantine
    from airloop.errors import BatchFormatError, BatchValidationError
    from airloop.gate import Announcement
    from airloop.ingest import Interval, ingest_batch
    from airloop.storage import partition_key, sha256_bytes

    payload, written = landed
    part = partition_key(day)
    interval = Interval(f"{day}T00:00:00+00:00", f"{day + dt.timedelta(days=1)}T00:00:00+00:00")
    announced = [Announcement(by="webhook sweep", rows=written, sha256=sha256_bytes(payload))]
    t = time.perf_counter()
    try:
        manifest = ingest_batch(
            cfg, root, partition=part, interval=interval, run_id=f"sweep-{day}", announced=announced
        )
    except BatchFormatError as e:
        return Verdict(str(day), False, "ingest", None, time.perf_counter() - t, [str(e).splitlines()[0]])
    try:
        out = quarantine.validate_partition(cfg, root, part)
    except BatchValidationError as e:
        return Verdict(str(day), False, "validation", manifest["rows"], time.perf_counter() - t, e.summary["failures"])
    return Verdict(str(day), True, "published", out["rows"], time.perf_counter() - t)


def sweep(model: str, n_days: int | None = None) -> dict[str, Any]:
    """Every day (or the first ``n_days``) of ``model``'s feed through the gate, in date order."""
    from airloop.config import get_pipeline
    from airloop.storage import DataRoot

    cfg = get_pipeline(model)
    days, land = _feeds()[model]
    days = days[:n_days] if n_days else days
    known, unusual = KNOWN_BROKEN.get(model, {}), UNUSUAL.get(model, {})
    with tempfile.TemporaryDirectory(prefix=f"gate-sweep-{model}-") as folder:
        root = DataRoot(folder)
        verdicts = [gate_day(cfg, root, day, land(cfg, root, day)) for day in days]
    by_day = {dt.date.fromisoformat(v.day): v for v in verdicts}
    refused = [v for v in verdicts if not v.passed]
    false_positives = [v for v in refused if dt.date.fromisoformat(v.day) not in known]
    misses = [str(d) for d in known if d in by_day and by_day[d].passed]
    return {
        "model": model,
        "days": len(verdicts),
        "published": len(verdicts) - len(refused),
        "refused": [asdict(v) | {"known_broken": known.get(dt.date.fromisoformat(v.day))} for v in refused],
        "false_positives": len(false_positives),
        "misses": misses,
        "unusual": {str(d): {"why": why, "passed": by_day[d].passed} for d, why in unusual.items() if d in by_day},
        "seconds_per_day": {
            "median": statistics.median(v.seconds for v in verdicts),
            "max": max(v.seconds for v in verdicts),
            "total": sum(v.seconds for v in verdicts),
        },
    }


def _print(result: dict[str, Any]) -> None:
    print(
        f"\n{result['model']}: {result['days']} days, {result['published']} published, {len(result['refused'])} "
        f"refused, false positives {result['false_positives']}, missed broken days {result['misses'] or 'none'}"
    )
    for r in result["refused"]:
        label = f"really broken: {r['known_broken']}" if r["known_broken"] else "FALSE POSITIVE"
        print(f"  refused {r['day']} at {r['stage']} ({label})")
        for f in r["failures"]:
            print(f"    {f[:300]}")
    for day, u in result["unusual"].items():
        print(f"  {'passed ' if u['passed'] else 'REFUSED'} {day}: {u['why']}")
    s = result["seconds_per_day"]
    print(f"  gate time per day: median {s['median']:.2f} s, max {s['max']:.2f} s, all days {s['total']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", choices=sorted(KNOWN_BROKEN), help="default: every shipped model")
    ap.add_argument("--days", type=int, help="the first N days of each feed only")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)  # the quarantine's warnings repeat what the verdicts say
    results = []
    for model in args.model or sorted(KNOWN_BROKEN):
        results.append(sweep(model, args.days))
        _print(results[-1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0 if all(r["false_positives"] == 0 and not r["misses"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
