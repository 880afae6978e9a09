"""End to end through the real stack: API server, scheduler (LocalExecutor), DAG processor, triggerer.

The same path as the README's first command, on the session's metadata database and a test port.
"""

from __future__ import annotations

import datetime as dt

import pytest
from airloop_local import cli
from airloop_local.cli.common import wait_runs
from airloop_local.webhook_client import WebhookSender

from airloop.http import HttpClient
from airloop.sources import nycflights13
from airloop.storage import DataRoot, default_data_root_uri

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOOD = [dt.date(2013, 6, 10), dt.date(2013, 6, 11)]
BAD = dt.date(2013, 6, 12)
HOOKED = dt.date(2013, 6, 13)  # announced by a signed webhook instead of a scheduled run


def test_scheduler_runs_ingest_and_gate(running_stack, cfg, capsys):
    s, api = running_stack
    root = DataRoot(default_data_root_uri())
    nycflights13.replay_days(
        root, cfg.name, [*GOOD, BAD, HOOKED], file_name=cfg.source.file_name, corruptions={BAD: "missing_column"}
    )
    dag_id = cfg.dag_id("ingest")
    api.wait_for_dag(dag_id)
    api.wait_for_dag(cfg.dag_id("release"))
    api.unpause(dag_id)
    run_ids = {api.trigger_interval(dag_id, d) for d in [*GOOD, BAD]}
    # the same interval again is the same run, not a second one
    assert api.trigger_interval(dag_id, GOOD[0]) in run_ids
    # an upstream system announces a landed batch with a signed webhook: a real ingestion run of its day
    sender = WebhookSender(s)
    status, answer = sender.send("flight-delays-landing", HOOKED, delivery_id="msg_stack_1")
    assert status == 202, answer
    hooked = answer["dag_run_id"]
    assert hooked == "webhook__flight-delays-landing__msg_stack_1"
    assert sender.send("flight-delays-landing", HOOKED, delivery_id="msg_stack_1")[0] == 200  # a repeat
    states = wait_runs(api, dag_id, {*run_ids, hooked}, timeout_s=600)
    assert states == {f"replay__{d}": "success" for d in GOOD} | {f"replay__{BAD}": "failed", hooked: "success"}
    manifest = root.read_json(f"{root.uri}/raw/{cfg.name}/ds={HOOKED}/_manifest.json")
    assert manifest["source_uri"].endswith(f"landing/{cfg.name}/ds={HOOKED}/flights.csv")

    # on-call: exactly one alert for the failed task, with its log URL and runbook
    from airloop.alerts import read_alerts

    [alert] = [a for a in read_alerts(root, cfg.name) if a.get("run_id") == f"replay__{BAD}"]
    assert (alert["task_id"], alert["try_number"], alert["kind"]) == ("validate_batch", 1, "batch_quarantined")
    assert alert["log_url"] == f"{s.base_url}/dags/{dag_id}/runs/replay__{BAD}/tasks/validate_batch?try_number=1"
    bearer = {"Authorization": f"Bearer {api.token()}"}
    assert "airloop quarantine release" in HttpClient(alert["runbook_url"]).get(headers=bearer).text()

    # the failed run: the gate failed once (no retry), ingest succeeded, the report is one click away
    tis = {t["task_id"]: t for t in api.task_instances(dag_id, f"replay__{BAD}")}
    assert tis["ingest_batch"]["state"] == "success"
    assert (tis["validate_batch"]["state"], tis["validate_batch"]["try_number"]) == ("failed", 1)
    links = api.get(f"/api/v2/dags/{dag_id}/dagRuns/replay__{BAD}/taskInstances/validate_batch/links")["extra_links"]
    url = links["Validation report"]
    assert url == f"/airloop/files/quarantine/{cfg.name}/ds={BAD}/report.html"
    page = HttpClient(s.base_url).get(url, headers=bearer).text()
    assert "FAILED" in page and "dest" in page

    # the asset events: one per good day, none for the bad one
    events = api.get("/api/v2/assets/events", limit=100)["asset_events"]
    sources = {e["source_run_id"] for e in events if e.get("source_dag_id") == dag_id}
    assert {f"replay__{d}" for d in GOOD} <= sources and f"replay__{BAD}" not in sources

    # on-call: a release of a batch that still fails is refused by the release DAG, and says why
    capsys.readouterr()
    rc = cli.main(["--state-dir", s.state_dir, "quarantine", "release", cfg.name, f"ds={BAD}", "--wait"])
    assert rc == 1
    assert "release failed" in capsys.readouterr().out
