"""Drift check benchmark: full Evidently vs the project's sampled path, at 10k, 100k and 1M current rows.

Reference: a seeded 5,000-row sample of January 1-21 features (what a training run logs). Current: summer
flights (July, repeated to reach the size). Both paths run ``airloop.drift.compare`` with the model's
drift config; "full" compares every row, "sampled" compares ``drift.sample_rows`` rows (seeded). Each
cell runs in a fresh interpreter so peak memory (ru_maxrss) is its own; a baseline process that only
builds the inputs is measured the same way and subtracted. Agreement: per-column drift verdicts and the
dataset verdict of the sampled path against the full one.

Run:  .venv/bin/python benchmarks/bench_drift.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CELL = r"""
import json, resource, sys, time
import pandas as pd
from airloop.config import get_pipeline
from airloop.drift import compare
from airloop.features import categorical_features, compute_features, feature_columns
from airloop.sources.nycflights13 import load_flights_with_weather

rows, mode = int(sys.argv[1]), sys.argv[2]
cfg = get_pipeline("flight_delays")
year = load_flights_with_weather()
jan = year[(year.month == 1) & (year.day <= 21)]
reference = compute_features(jan, cfg.features).sample(n=5000, random_state=13)
july = compute_features(year[year.month == 7], cfg.features)
current = pd.concat([july] * (rows // len(july) + 1), ignore_index=True).head(rows)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
out = None
if mode != "inputs":
    out, _ = compare(reference, current, feature_columns(cfg.features), categorical_features(cfg.features), cfg.drift,
                     13, None if mode == "full" else cfg.drift.sample_rows)
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("RESULT" + json.dumps({"wall": wall, "peak_mb": peak / 1024, "inputs_mb": base / 1024, "verdict": out}))
"""


def cell(rows: int, mode: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CELL, str(rows), mode],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))[6:])


def main() -> None:
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}\n")
    print(
        f"{'current rows':>12s} {'path':8s} {'seconds':>8s} {'peak MB':>8s} {'over inputs MB':>15s} "
        f"{'share':>6s} {'drift':>6s} {'column verdicts agree':>22s}"
    )
    for rows in (10_000, 100_000, 1_000_000):
        full, sampled = cell(rows, "full"), cell(rows, "sampled")
        f, s = full["verdict"], sampled["verdict"]
        agree = sum((c in f["drifted_columns"]) == (c in s["drifted_columns"]) for c in f["column_scores"])
        same = "same" if f["dataset_drift"] == s["dataset_drift"] else "DIFFERENT"
        for name, r in (("full", full), ("sampled", sampled)):
            v = r["verdict"]
            note = "" if name == "full" else f"{agree}/{len(f['column_scores'])}, dataset {same}"
            print(
                f"{rows:>12,d} {name:8s} {r['wall']:>8.2f} {r['peak_mb']:>8.0f} {r['peak_mb'] - r['inputs_mb']:>15.0f} "
                f"{v['drift_share']:>6.2f} {v['dataset_drift']!s:>6s} {note:>22s}"
            )
        extra_full, extra_sampled = full["peak_mb"] - full["inputs_mb"], sampled["peak_mb"] - sampled["inputs_mb"]
        mem = (
            f"{extra_full / extra_sampled:.1f}x"
            if extra_sampled >= 1
            else f"{extra_full:.0f} MB vs under 1 MB (the inputs' own peak was higher)"
        )
        print(f"{'':>12s} full/sampled: time {full['wall'] / sampled['wall']:.1f}x, peak memory over the inputs {mem}")


if __name__ == "__main__":
    main()
