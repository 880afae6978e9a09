"""On-call alerts: what a failure is classified as, what the alert says, and that every channel gets it.

Slack and the HTTP webhook are real HTTP posts (the Slack provider's hook, ``requests``) to a recording
server on loopback; the end-to-end case runs the ingest DAG on a broken batch through Airflow.
"""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request

from airloop.alerts import read_alerts
from airloop.errors import BatchFormatError, BatchNotFoundError, BatchValidationError
from airloop.storage import DataRoot
from airloop_airflow.alerting import AirloopFailureNotifier, OnCallFailure, build_alert, classify, deliver
from tests.conftest import free_port, serve_in_thread

pytestmark = pytest.mark.unit


def wrapped(cause: Exception):
    """How operators surface data problems: a non-retryable AirflowFailException raised from the cause."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        try:
            raise cause
        except Exception as e:
            raise AirflowFailException(str(e)) from e
    except AirflowFailException as outer:
        return outer


def test_failures_are_classified_by_their_cause_then_by_task():
    from airflow.providers.cncf.kubernetes.utils.pod_manager import PodLaunchTimeoutException

    failed = BatchValidationError("2 expectations failed", summary={"failed": 2}, quarantine_uri="/q/ds=1")
    assert classify("validate_batch", wrapped(failed)) == ("batch_quarantined", {"validation": {"failed": 2}, "quarantine_uri": "/q/ds=1"})
    assert classify("ingest_batch", wrapped(BatchFormatError("not csv")))[0] == "batch_unreadable"
    assert classify("ingest_batch", BatchNotFoundError("no batch at ..."))[0] == "batch_late"
    assert classify("train_model", PodLaunchTimeoutException("Pod took too long to start"))[0] == "training_pod_pending"
    assert classify("x", OnCallFailure("v3 rolled back", kind="canary_rollback", details={"p": 1})) == ("canary_rollback", {"p": 1})
    assert classify("gate_challenger", RuntimeError("boom"))[0] == "gate_refused"
    assert classify("build_features", RuntimeError("spark died"))[0] == "rerun_interval"


def _ti(**kw):
    base = {"dag_id": "flight_delays__ingest", "task_id": "validate_batch", "run_id": "scheduled__2013-01-22", "try_number": 1,
            "log_url": "http://127.0.0.1:8080/dags/flight_delays__ingest/runs/scheduled__2013-01-22/tasks/validate_batch?try_number=1"}
    return SimpleNamespace(**{**base, **kw})


def test_the_alert_explains_and_links():
    exc = wrapped(BatchValidationError("Batch flight_delays/ds=2013-01-22 failed 1 of 25 expectations:\n- column dest missing",
                                       summary={"failed": 1}))
    alert = build_alert({"ti": _ti(), "exception": exc}, "flight_delays")
    assert alert["summary"] == ("flight_delays__ingest.validate_batch failed (try 1): "
                                "Batch flight_delays/ds=2013-01-22 failed 1 of 25 expectations:")
    assert "column dest missing" in alert["error"] and alert["error_type"] == "AirflowFailException"
    assert alert["kind"] == "batch_quarantined" and alert["runbook"] == "include/runbooks/batch-quarantined.md"
    assert alert["runbook_url"].endswith("/airloop/runbooks/batch_quarantined") and alert["log_url"] == _ti().log_url
    # a task killed from outside reaches its callback without an exception object
    killed = build_alert({"ti": _ti(task_id="ingest_batch"), "exception": None}, "flight_delays")
    assert "killed, out of memory" in killed["error"] and killed["kind"] == "rerun_interval"


@pytest.fixture()
def receiver():
    got: list[tuple[str, dict, dict]] = []
    app = FastAPI()

    @app.post("/{path:path}")
    async def record(path: str, request: Request):
        got.append((path, dict(request.headers), json.loads(await request.body())))
        return "ok"

    with serve_in_thread(app) as url:
        yield url, got


def test_every_configured_channel_gets_the_alert(receiver, cfg, tmp_path, monkeypatch):
    url, got = receiver
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps({"conn_type": "slackwebhook", "host": f"{url}/services",
                                                               "password": "T000/B000/XXXX"}))
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOOP_ALERTS_HTTP", json.dumps({"conn_type": "http", "host": f"{url}/hooks/oncall",
                                                                      "password": "tok"}))
    all_channels = cfg.model_copy(update={"alerts": cfg.alerts.model_copy(update={"channels": ("log", "slack", "http")})})
    alert = build_alert({"ti": _ti(task_id="gate_challenger", dag_id="flight_delays__train"),
                         "exception": OnCallFailure("v7 did not pass the gate: 0.61 < 0.66", kind="gate_refused",
                                                    details={"gate": {"challenger_score": 0.61}})}, cfg.name)
    root = DataRoot(str(tmp_path))
    assert deliver(all_channels, alert, root) == {"log": "sent", "slack": "sent", "http": "sent"}

    [(slack_path, _, slack), (http_path, http_headers, posted)] = sorted(got, key=lambda g: g[0] != "services/T000/B000/XXXX")
    assert slack_path == "services/T000/B000/XXXX"
    assert "`flight_delays__train.gate_challenger` failed" in slack["text"] and "0.61 < 0.66" in slack["text"]
    assert f"<{alert['log_url']}|Task log>" in slack["text"] and "|Runbook: gate refused>" in slack["text"]
    assert http_path == "hooks/oncall" and http_headers["authorization"] == "Bearer tok"
    assert posted == json.loads(json.dumps(alert))
    [logged] = read_alerts(root, cfg.name)
    assert logged["details"] == {"gate": {"challenger_score": 0.61}} and logged["kind"] == "gate_refused"


def test_a_channel_that_is_down_does_not_silence_the_others(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOOP_ALERTS_HTTP", json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{free_port()}/x"}))
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_ALERTS", raising=False)
    both = cfg.model_copy(update={"alerts": cfg.alerts.model_copy(update={"channels": ("http", "slack", "log")})})
    alert = build_alert({"ti": _ti(), "exception": RuntimeError("x")}, cfg.name)
    out = deliver(both, alert, DataRoot(str(tmp_path)))
    assert out["log"] == "sent" and out["http"].startswith("failed: ") and out["slack"].startswith("failed: ")
    assert len(read_alerts(DataRoot(str(tmp_path)), cfg.name)) == 1


@pytest.mark.integration
def test_a_broken_batch_through_airflow_sends_exactly_one_alert(airflow_db, cfg):
    """The ingest DAG on a batch with a missing column: validate_batch fails once (no retry) and its
    failure callback writes one alert with the failed expectations, the log URL and the runbook."""
    from airloop.sources import nycflights13
    from airloop.storage import default_data_root_uri
    from airloop_airflow.dag_factory import build_pipeline_dags

    day = dt.date(2013, 5, 20)
    root = DataRoot(default_data_root_uri())
    nycflights13.replay_days(root, cfg.name, [day], file_name=cfg.source.file_name, corruptions={day: "missing_column"})
    dag = build_pipeline_dags()["flight_delays__ingest"]
    assert isinstance(dag.default_args["on_failure_callback"][0], AirloopFailureNotifier)
    before = len(read_alerts(root, cfg.name))
    run = dag.test(logical_date=dt.datetime(2013, 5, 21, tzinfo=dt.UTC))
    assert run.state == "failed"
    new = read_alerts(root, cfg.name)[before:]
    assert len(new) == 1, new
    [a] = new
    assert (a["dag_id"], a["task_id"], a["run_id"], a["try_number"]) == ("flight_delays__ingest", "validate_batch", run.run_id, 1)
    assert a["kind"] == "batch_quarantined" and "dest" in a["error"] and a["details"]["quarantine_uri"].endswith("ds=2013-05-20")
    assert a["log_url"].endswith("/tasks/validate_batch?try_number=1") and "/dags/flight_delays__ingest/runs/" in a["log_url"]
    assert a["runbook_url"].endswith("/airloop/runbooks/batch_quarantined")
