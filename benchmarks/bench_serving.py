"""Serving benchmark: the airloop model server vs the pyfunc called in process vs ``mlflow models serve``.

All three serve the same registered model (trained here on one week of January flights). Each request
scores one real flight (``dataframe_split``); latency p50/p99 and throughput at concurrency 1 and 8.
The airloop server also writes every prediction to its durable log (fsync per request), which the other
two do not do.

Run:  .venv/bin/python benchmarks/bench_serving.py [--requests 400]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from airloop.http import HttpClient, HttpError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(tmp: Path) -> tuple[str, list[bytes], object]:
    """Register one model in a fresh MLflow store; return its tracking URI, request bodies, rows."""
    from airloop.config import get_pipeline
    from airloop.datasets import load_partitions
    from airloop.features import compute_features, feature_columns, feature_version, label
    from airloop.ingest import Interval, ingest_batch
    from airloop.sources import nycflights13
    from airloop.storage import DataRoot, frame_to_parquet_bytes
    from airloop.training.request import TrainRequest
    from airloop.training.train import train

    cfg = get_pipeline("flight_delays")
    root = DataRoot(tmp / "data")
    days = [dt.date(2013, 1, 1) + dt.timedelta(days=i) for i in range(7)]
    nycflights13.replay_days(root, cfg.name, days, file_name=cfg.source.file_name)
    parts = []
    for d in days:
        p = f"ds={d}"
        m = ingest_batch(cfg, root, partition=p, interval=Interval(None, None), run_id="bench")
        raw = load_partitions(root, "raw", cfg.name, (p,))
        feats = compute_features(raw, cfg.features, keep=[cfg.event_time])[
            [*feature_columns(cfg.features), cfg.event_time]
        ]
        feats[cfg.task.target] = label(raw, "arr_delay", 15)
        root.write_partition(
            root.features(cfg.name, p),
            {},
            {"source_content_hash": m["content_hash"], "feature_version": feature_version(cfg.features)},
        )
        data_dir = Path(root.features_data(cfg.name, p))
        data_dir.mkdir()
        (data_dir / "part.parquet").write_bytes(frame_to_parquet_bytes(feats))
        parts.append(p)
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    res = train(
        TrainRequest(
            model=cfg.name, data_root=root.uri, partitions=tuple(parts), run_key="bench/1", tracking_uri=tracking
        )
    )
    from mlflow import MlflowClient

    MlflowClient(tracking).set_registered_model_alias(cfg.name, "champion", res["version"])
    rows = load_partitions(root, "raw", cfg.name, (parts[-1],))[cfg.request_columns]
    bodies = [
        json.dumps({"dataframe_split": json.loads(rows.iloc[[i]].to_json(orient="split", index=False))}).encode()
        for i in range(len(rows))
    ]
    return tracking, bodies, rows


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {url}; see its log beside the data")
        try:
            HttpClient(url, timeout=1, retries=0).get()
            return
        except HttpError:
            time.sleep(0.25)
    raise SystemExit(f"server not ready: {url}")


def measure(call, n: int, concurrency: int, warmup: int = 10) -> dict[str, float]:
    """Run ``call(i)`` n times on ``concurrency`` threads after a warm-up; latency and throughput."""
    lat: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        t = time.perf_counter()
        call(i)
        with lock:
            lat.append(time.perf_counter() - t)

    for i in range(warmup):
        one(i)
    lat.clear()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(one, range(n)))
    return summarise(lat, time.perf_counter() - t0)


def load_http(url: str, bodies: list[bytes], n: int, concurrency: int) -> dict[str, float]:
    client = HttpClient(url, retries=0)  # every request measured once, none retried
    headers = {"content-type": "application/json"}

    def call(i: int) -> None:
        client.post(data=bodies[i % len(bodies)], headers=headers)

    return measure(call, n, concurrency)


def load_inprocess(model: object, rows: object, n: int, concurrency: int) -> dict[str, float]:
    frames = [rows.iloc[[i % len(rows)]] for i in range(n)]
    return measure(lambda i: model.predict(frames[i]), n, concurrency)


def summarise(lat: list[float], wall: float) -> dict[str, float]:
    lat = sorted(lat)
    return {
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1000,
        "rps": len(lat) / wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=400)
    args = ap.parse_args()
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; {args.requests} one-row requests per cell\n"
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tracking, bodies, rows = prepare(tmp)
        # mlflow models serve runs `uvicorn` from PATH: make it this environment's
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking,
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        }
        p1, p2 = free_port(), free_port()
        ours = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airloop.serving.server",
                "--model",
                "flight_delays",
                "--port",
                str(p1),
                "--data-root",
                str(tmp / "data"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "ours.log", "w"),
        )
        theirs = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "models",
                "serve",
                "-m",
                "models:/flight_delays@champion",
                "--env-manager",
                "local",
                "-p",
                str(p2),
                "-h",
                "127.0.0.1",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "mlflow-serve.log", "w"),
        )
        try:
            try:
                wait_ready(f"http://127.0.0.1:{p1}/ping", ours)
                wait_ready(f"http://127.0.0.1:{p2}/ping", theirs)
            except SystemExit:
                for f in ("ours.log", "mlflow-serve.log"):
                    print(f"--- {f}\n" + (tmp / f).read_text()[-1500:])
                raise
            import mlflow

            mlflow.set_tracking_uri(tracking)
            model = mlflow.pyfunc.load_model("models:/flight_delays@champion")
            results = {}
            for c in (1, 8):
                results[("pyfunc in process", c)] = load_inprocess(model, rows, args.requests, c)
                results[("airloop server", c)] = load_http(
                    f"http://127.0.0.1:{p1}/invocations", bodies, args.requests, c
                )
                results[("mlflow models serve", c)] = load_http(
                    f"http://127.0.0.1:{p2}/invocations", bodies, args.requests, c
                )
        finally:
            for p in (ours, theirs):
                p.terminate()
                p.wait(timeout=30)
    print(
        f"{'path':22s} {'conc':>4s} {'p50 ms':>8s} {'p99 ms':>8s} "
        f"{'req/s':>8s} {'p50 vs mlflow':>14s} {'req/s vs mlflow':>16s}"
    )
    for (name, c), r in results.items():
        ref = results[("mlflow models serve", c)]
        print(
            f"{name:22s} {c:>4d} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['rps']:>8.1f} "
            f"{r['p50_ms'] / ref['p50_ms']:>14.2f} {r['rps'] / ref['rps']:>16.2f}"
        )


if __name__ == "__main__":
    main()
