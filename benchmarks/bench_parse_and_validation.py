"""Benchmarks of the foundation, each against a baseline measured in the same run.

(a) DAG parse time: each file in dags/ vs a one-task reference DAG with the same airflow.sdk imports.
    Each sample is a fresh interpreter that has already imported airflow.sdk (as the DAG processor's
    parsing process has); what is timed is executing the DAG file, i.e. what the file itself costs.
(b) Validation: the Great Expectations gate (the model's full suite) vs the same checks hand-written in
    vectorised pandas, on one day, one month and the whole year of real flights. Both verdicts are
    compared so the baseline is known to check the same things.

Run:  .venv/bin/python benchmarks/bench_parse_and_validation.py [--repeat N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

REFERENCE_DAG = """
import datetime as dt
from airflow.sdk import DAG, BaseOperator, CronDataIntervalTimetable, Param, Asset

class Noop(BaseOperator):
    def execute(self, context):
        return None

with DAG(dag_id="reference", schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
         start_date=dt.datetime(2013, 1, 1, tzinfo=dt.UTC), catchup=False, tags=["ref"],
         params={"x": Param(None, type=["null", "string"])}) as dag:
    Noop(task_id="noop", outlets=[Asset(name="ref.validated", uri="airloop://ref/validated")])
"""

PARSE_ONE = r"""
import sys, time, runpy, json
import airflow.sdk  # the DAG processor has this loaded before it parses a file
t = time.perf_counter()
ns = runpy.run_path(sys.argv[1])
elapsed = time.perf_counter() - t
from airflow.sdk import DAG
print(json.dumps({"ms": elapsed * 1000, "dags": sum(isinstance(v, DAG) for v in ns.values())}))
"""


def parse_times(path: Path, repeat: int, env: dict[str, str]) -> tuple[list[float], int]:
    out, dags = [], 0
    for _ in range(repeat):
        proc = subprocess.run(
            [sys.executable, "-c", PARSE_ONE, str(path)], capture_output=True, text=True, env=env, cwd=REPO
        )
        if proc.returncode != 0:
            raise SystemExit(f"parsing {path} failed:\n{proc.stderr[-2000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        out.append(res["ms"])
        dags = res["dags"]
    return out, dags


def bench_parse(repeat: int) -> list[dict]:
    home = tempfile.mkdtemp(prefix="airloop-bench-")
    env = {
        **os.environ,
        "AIRFLOW_HOME": home,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
    ref = Path(home) / "reference_dag.py"
    ref.write_text(REFERENCE_DAG)
    ref_ms, _ = parse_times(ref, repeat, env)
    rows = [{"file": "reference (1 task)", "dags": 1, "median_ms": statistics.median(ref_ms), "ratio": 1.0}]
    for f in sorted((REPO / "dags").glob("*.py")):
        ms, n = parse_times(f, repeat, env)
        rows.append(
            {
                "file": f"dags/{f.name}",
                "dags": n,
                "median_ms": statistics.median(ms),
                "ratio": statistics.median(ms) / statistics.median(ref_ms),
            }
        )
    return rows


# -- (b) validation -----------------------------------------------------------------------------------
def pandas_checks(cfg, df) -> dict[str, bool]:
    """The same suite, hand-written in vectorised pandas: name -> passed."""
    import numpy as np
    import pandas as pd

    from airloop.validation import TYPE_LISTS, load_suite_dict

    res: dict[str, bool] = {}
    cols = cfg.data_schema.columns
    res["columns"] = set(cols) <= set(df.columns)
    res["rows"] = len(df) >= cfg.validation.min_rows
    for c, typ in cols.items():
        res[f"type:{c}"] = c in df.columns and str(df[c].dtype) in TYPE_LISTS[typ]
    for i, e in enumerate(load_suite_dict(cfg)["expectations"]):
        kw, t = e["kwargs"], e["type"]
        col = df[kw["column"]] if kw.get("column") in df.columns else None
        if col is None:
            res[f"{i}:{t}"] = False
            continue
        mostly = kw.get("mostly", 1.0)
        nonnull = col.notna()
        if t == "expect_column_values_to_not_be_null":
            ok = nonnull.mean() >= mostly if len(col) else True
        elif t == "expect_column_values_to_be_between":
            v = pd.to_numeric(col[nonnull], errors="coerce")
            ok = bool(((v >= kw["min_value"]) & (v <= kw["max_value"])).mean() >= mostly) if len(v) else True
        elif t == "expect_column_values_to_be_in_set":
            ok = bool(col[nonnull].isin(kw["value_set"]).mean() >= mostly) if nonnull.any() else True
        elif t == "expect_column_values_to_match_regex":
            ok = (
                bool(col[nonnull].astype(str).str.contains(kw["regex"], regex=True).mean() >= mostly)
                if nonnull.any()
                else True
            )
        elif t == "expect_column_proportion_of_unique_values_to_be_between":
            p = col[nonnull].nunique() / max(int(nonnull.sum()), 1)
            ok = kw["min_value"] <= p <= kw["max_value"]
        else:
            raise NotImplementedError(t)
        res[f"{i}:{t}:{kw['column']}"] = bool(np.bool_(ok))
    return res


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_validation(repeat: int) -> list[dict]:
    from airloop.config import get_pipeline
    from airloop.ingest import read_batch
    from airloop.sources.nycflights13 import corrupt, day_frame, load_flights_with_weather
    from airloop.validation import validate_frame

    cfg = get_pipeline("flight_delays")
    t = time.perf_counter()
    import great_expectations  # noqa: F401

    gx_import_s = time.perf_counter() - t
    year = load_flights_with_weather()
    # stored batches hold naive UTC timestamps: give the gate what it sees in production
    year = year.assign(time_hour=year["time_hour"].dt.tz_localize(None))
    slices = {
        "one day (2013-01-02)": year[(year.month == 1) & (year.day == 2)],
        "one month (2013-01)": year[year.month == 1],
        "full year": year,
        # a failing batch too, so agreement is shown on a FAIL verdict as well
        "one day, out of range": read_batch(corrupt(day_frame(dt.date(2013, 1, 2)), "out_of_range"), cfg),
    }
    validate_frame(cfg, slices["one day (2013-01-02)"])  # warm GX's own lazy imports once
    rows = []
    for name, df in slices.items():
        df = df.reset_index(drop=True)
        gx_s, outcome = timed(lambda df=df: validate_frame(cfg, df), repeat)
        pd_s, checks = timed(lambda df=df: pandas_checks(cfg, df), repeat)
        agree = outcome.success == all(checks.values())
        rows.append(
            {
                "slice": name,
                "rows": len(df),
                "checks": len(outcome.expectations),
                "gx_s": gx_s,
                "pandas_s": pd_s,
                "ratio": gx_s / pd_s,
                "gx_pass": outcome.success,
                "pandas_pass": all(checks.values()),
                "agree": agree,
            }
        )
    return [{"gx_import_s": gx_import_s}, *rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}\n")

    print(f"(a) DAG parse time, median of {args.repeat} fresh interpreters (airflow.sdk preloaded)")
    print(f"{'file':32s} {'dags':>4s} {'median ms':>10s} {'x reference':>12s}")
    for r in bench_parse(args.repeat):
        print(f"{r['file']:32s} {r['dags']:>4d} {r['median_ms']:>10.1f} {r['ratio']:>12.2f}")

    print(f"\n(b) Validation gate, best of {args.repeat}: Great Expectations vs the same checks in vectorised pandas")
    gx_import, *rows = bench_validation(args.repeat)
    print(f"great_expectations import: {gx_import['gx_import_s']:.2f} s (once per task process)")
    print(
        f"{'slice':24s} {'rows':>8s} {'checks':>6s} {'GX s':>8s} "
        f"{'pandas s':>9s} {'GX/pandas':>10s} {'verdicts agree':>15s}"
    )
    for r in rows:
        print(
            f"{r['slice']:24s} {r['rows']:>8d} {r['checks']:>6d} {r['gx_s']:>8.3f} {r['pandas_s']:>9.3f} "
            f"{r['ratio']:>10.1f} {str(r['agree']) + (' (pass)' if r['gx_pass'] else ' (fail)'):>15s}"
        )
    if not all(r["agree"] for r in rows):
        raise SystemExit("the pandas baseline and GX disagree: the baseline is not checking the same thing")


if __name__ == "__main__":
    main()
