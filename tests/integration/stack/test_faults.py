"""Faults on the real stack: a task process killed with SIGKILL, and PostgreSQL restarted during a run.

SIGKILL: the gate task of a real ingestion run is killed while Great Expectations runs; Airflow retries it
(with backoff) and the batch is published exactly once: one Asset event, one raw partition whose manifest
matches its file, nothing in quarantine, no alert (a retried failure is not a failed task).

PostgreSQL restart (only where the metadata database is PostgreSQL, as in CI): the server is restarted
while an ingestion run is under way; the run must end (recovered or clearly failed) and its partition is
either complete or absent.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from airloop_local.cli.common import wait_runs

from airloop.alerts import read_alerts
from airloop.sources import nycflights13
from airloop.storage import MANIFEST, DataRoot

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "flight_delays__ingest"


def _task(api, run_id: str, task_id: str) -> dict:
    return api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")


def _task_process(ti_id: str) -> int | None:
    """The pid of the process running a task instance (Airflow titles it ``airflow worker -- <ti id>``)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"airflow worker -- {ti_id}" in cmd:
            return int(proc.name)
    return None


def _wait_running(api, run_id: str, task_id: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ti = _task(api, run_id, task_id)
        except Exception:  # not created yet
            ti = {}
        if ti.get("state") == "running":
            return ti
        if ti.get("state") in ("success", "failed"):
            raise AssertionError(f"{task_id} ended ({ti['state']}) before it could be interrupted")
        time.sleep(0.2)
    raise AssertionError(f"{task_id} of {run_id} did not start within {timeout_s} s")


def _partition_is_whole(root: DataRoot, day: dt.date) -> None:
    import pandas as pd

    uri = f"{root.uri}/raw/flight_delays/ds={day}"
    manifest = root.read_json(f"{uri}/{MANIFEST}")
    files = [f for f in Path(uri).rglob("*.parquet")]
    rows = sum(len(pd.read_parquet(f)) for f in files)
    assert rows == manifest["rows"], (rows, manifest)


def _start_ingest(s, api, cfg, day: dt.date) -> tuple[DataRoot, str]:
    """Land a real day and start its ingest run through the scheduler."""
    root = DataRoot(s.data_root)
    nycflights13.replay_days(root, cfg.name, [day], file_name=cfg.source.file_name)
    api.wait_for_dag(DAG_ID)
    api.unpause(DAG_ID)
    return root, api.trigger_interval(DAG_ID, day)


def test_a_task_killed_with_sigkill_is_retried_and_publishes_once(running_stack, cfg):
    s, api = running_stack
    day = dt.date(2013, 6, 25)
    root, run_id = _start_ingest(s, api, cfg, day)

    ti = _wait_running(api, run_id, "validate_batch")
    deadline, pid = time.monotonic() + 30, None
    while pid is None and time.monotonic() < deadline:
        pid = _task_process(ti["id"])
        time.sleep(0.05)
    assert pid, f"no process titled 'airflow worker -- {ti['id']}'"
    os.kill(pid, signal.SIGKILL)

    state = wait_runs(api, DAG_ID, {run_id}, timeout_s=600)[run_id]
    ti = _task(api, run_id, "validate_batch")
    assert (state, ti["state"], ti["try_number"]) == ("success", "success", 2), ti
    events = [
        e for e in api.get("/api/v2/assets/events", limit=1000)["asset_events"] if e.get("source_run_id") == run_id
    ]
    assert len(events) == 1 and events[0]["extra"]["partition"] == f"ds={day}"
    _partition_is_whole(root, day)
    assert not Path(f"{root.uri}/quarantine/flight_delays/ds={day}").exists()
    assert [a for a in read_alerts(root, cfg.name) if a.get("run_id") == run_id] == []


def _restart_command(db_url: str) -> list[str]:
    port = str(urlparse(db_url.replace("+psycopg2", "")).port or 5432)
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        version, name, cport = line.split()[:3]
        if cport == port:
            return ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "restart"]
    raise AssertionError(f"no PostgreSQL cluster on port {port} in pg_lsclusters: {out}")


def test_postgres_restarted_mid_run(running_stack, cfg):
    s, api = running_stack
    if not s.db_url.startswith("postgresql"):
        pytest.skip("the metadata database is SQLite here; this fault is checked where it is PostgreSQL (CI)")
    day = dt.date(2013, 6, 26)
    root, run_id = _start_ingest(s, api, cfg, day)
    _wait_running(api, run_id, "validate_batch")
    subprocess.run(_restart_command(s.db_url), check=True, timeout=120)

    deadline = time.monotonic() + 600
    state = None
    while time.monotonic() < deadline:
        try:
            state = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        except Exception:  # the API server reconnects on its next request
            state = None
        if state in ("success", "failed"):
            break
        time.sleep(3)
    assert state in ("success", "failed"), f"run {run_id} neither recovered nor failed after the restart: {state}"
    _partition_is_whole(root, day)  # ingest had finished before the restart: it is whole either way
    tis = {t["task_id"]: t for t in api.task_instances(DAG_ID, run_id)}
    if state == "failed":  # failed clearly: the failed task sent its alert
        failed = [t for t, v in tis.items() if v["state"] == "failed"]
        alerts = [a for a in read_alerts(root, cfg.name) if a.get("run_id") == run_id]
        assert failed and {a["task_id"] for a in alerts} == set(failed)
    else:
        events = [
            e for e in api.get("/api/v2/assets/events", limit=1000)["asset_events"] if e.get("source_run_id") == run_id
        ]
        assert len(events) == 1
    summary = ", ".join(f"{k}: {v['state']} try {v['try_number']}" for k, v in tis.items())
    print(f"\nPostgreSQL restarted during {run_id}: run {state}; tasks {summary}")
