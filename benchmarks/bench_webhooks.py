"""Webhook benchmark: latency from request to 202, with signature checking vs the same request without it.

The plugin's webhook app runs under uvicorn on loopback against a real Airflow metadata database (a fresh
SQLite home, or ``AIRLOOP_DATABASE_URL``) with the DAGs parsed into it; every request is a new signed
"batch landed" delivery, so each one creates a DAG run. The baseline replaces only the signature check
(``airloop.webhooks.verify``) with one that reads the delivery id and checks nothing; everything else
(body limit, schema, run creation) is the same. Both modes alternate in batches in one run.

Run:  .venv/bin/python benchmarks/bench_webhooks.py [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path

from airloop.http import HttpClient

REPO = Path(__file__).resolve().parents[1]


def q(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p * (len(s) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="requests per mode")
    ap.add_argument("--batch", type=int, default=25, help="requests per batch before switching mode")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="airloop-bench-webhooks-"))
    # a delivery's day must be one of the model's schedule (a day has one run): the model's config with
    # its schedule opened from 2000 on, so that every request can name a day of its own
    pipelines = tmp / "pipelines"
    pipelines.mkdir()
    text = (REPO / "include" / "airloop" / "pipelines" / "flight_delays.yaml").read_text()
    opened = re.sub(r"(?m)^  end_date: .*\n", "", text.replace("start_date: 2013-01-01", "start_date: 2000-01-01", 1))
    assert opened != text and "end_date" not in opened.split("schema:")[0]
    (pipelines / "flight_delays.yaml").write_text(opened)
    os.environ["AIRLOOP_PIPELINES_DIR"] = str(pipelines)
    os.environ["AIRLOOP_HOME"] = str(tmp / "state")
    os.environ["AIRLOOP_DATA_ROOT"] = str(tmp / "state" / "data")
    sys.path.insert(0, str(REPO))
    from airloop_local import stack

    s = stack.StackSettings(
        state_dir=str(tmp / "state"), port=18780, database_url=os.environ.get("AIRLOOP_DATABASE_URL", "")
    )
    stack.init(s)
    stack.run_airflow(s, "dags", "reserialize", capture=True)
    # the API server's environment: the one component that holds the webhook connections (their secrets)
    api_env = stack.component_env(s, "api-server")
    os.environ.update({k: v for k, v in api_env.items() if k.startswith(("AIRFLOW", "AIRLOOP"))})
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"  # one log line per created run would drown the figures

    import importlib.util

    import uvicorn

    from airloop import webhooks as wh
    from airloop.config import get_pipeline
    from airloop.ingest import landing_uri
    from airloop.storage import DataRoot, partition_key

    cfg, root = get_pipeline("flight_delays"), DataRoot(s.data_root)
    spec = importlib.util.spec_from_file_location("airloop_plugin", REPO / "plugins" / "airloop_plugin.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(plugin.app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.config.port}/webhooks/flight-delays-landing"
    secret = s.webhook_secret("airloop_webhook_flight_delays")
    import datetime as dt

    def body_for(n: int) -> bytes:  # one day per delivery: a day has one run
        day = dt.date(2000, 1, 1) + dt.timedelta(days=n)
        return json.dumps({"source_uri": landing_uri(cfg, root, partition_key(day)), "day": day.isoformat()}).encode()

    real_verify = wh.verify

    def no_check(scheme, secrets, headers, body, **kw):  # the baseline: read the id, check nothing
        return wh.Delivery(headers.get("webhook-id"), body)

    client = HttpClient(url, retries=0)  # every delivery measured once, none retried
    lat: dict[str, list[float]] = {"signed": [], "unchecked": []}
    n = 0

    def one(mode: str) -> None:
        nonlocal n
        n += 1
        mid = f"bench_{mode}_{n}"
        body = body_for(n)
        headers = {**wh.signed_headers("standard", secret, mid, body), "Content-Type": "application/json"}
        if mode == "unchecked":
            headers["webhook-signature"] = "v1,none"
        t = time.perf_counter()
        status = client.post(data=body, headers=headers).status
        assert status == 202, status
        lat[mode].append(time.perf_counter() - t)

    for mode in ("signed", "unchecked"):  # warm-up, not counted
        wh.verify = real_verify if mode == "signed" else no_check
        for _ in range(10):
            one(mode)
        lat[mode].clear()
    while len(lat["signed"]) < args.requests:
        for mode in ("signed", "unchecked"):
            wh.verify = real_verify if mode == "signed" else no_check
            for _ in range(args.batch):
                one(mode)
    wh.verify = real_verify

    body = body_for(0)
    headers = wh.signed_headers("standard", secret, "x", body)
    per_check = (
        min(timeit.repeat(lambda: real_verify("standard", [secret], headers, body), number=2000, repeat=5)) / 2000
    )
    server.should_exit = True

    db = "PostgreSQL" if s.database_url.startswith("postgresql") else "SQLite"
    print(
        f"webhook request -> 202 (new DAG run each), {args.requests} requests per mode, concurrency 1, metadata DB {db}"
    )
    print(f"{'mode':<28}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for mode, label in (("signed", "signature checked"), ("unchecked", "no signature check (baseline)")):
        v = lat[mode]
        print(f"{label:<28}{q(v, 0.5) * 1000:>10.2f}{q(v, 0.99) * 1000:>10.2f}{statistics.mean(v) * 1000:>10.2f}")
    print(
        f"ratio signed/unchecked: p50 {q(lat['signed'], 0.5) / q(lat['unchecked'], 0.5):.3f}x, "
        f"p99 {q(lat['signed'], 0.99) / q(lat['unchecked'], 0.99):.3f}x"
    )
    print(f"the signature check alone (HMAC-SHA256 + timestamp, in process): {per_check * 1e6:.1f} us per delivery")
    return 0


if __name__ == "__main__":
    sys.exit(main())
