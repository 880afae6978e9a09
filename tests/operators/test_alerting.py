"""On-call alerts: what a failure is classified as, what the alert says, and that every channel gets it.

Slack and the HTTP webhook are real HTTP posts (the Slack provider's hook, ``AlertWebhookHook``) to a recording
server on loopback; the end-to-end case runs the ingest DAG on a broken batch through Airflow. A failed
feature job runs the Spark provider's real hook on a stand-in ``spark-submit`` that prints what a PySpark
job whose Python worker failed prints (taken from a real run) and exits 1; a deploy that never started
calls a model server that is not there, or answers 503.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request, Response

from airloop.alerts import error_in_output, exception_chain, read_alerts
from airloop.errors import BatchFormatError, BatchNotFoundError, BatchValidationError
from airloop.storage import DataRoot
from airloop_airflow.notifiers.alerts import (
    FAULT_KINDS,
    TASK_KINDS,
    AirloopFailureNotifier,
    JobFailure,
    OnCallFailure,
    build_alert,
    classify,
    deliver,
    root_error,
)
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
    assert classify("validate_batch", wrapped(failed)) == (
        "batch_quarantined",
        {"validation": {"failed": 2}, "quarantine_uri": "/q/ds=1"},
    )
    assert classify("ingest_batch", wrapped(BatchFormatError("not csv")))[0] == "batch_unreadable"
    assert classify("ingest_batch", BatchNotFoundError("no batch at ..."))[0] == "batch_late"
    assert classify("train_model", PodLaunchTimeoutException("Pod took too long to start"))[0] == "training_pod_pending"
    assert classify("x", OnCallFailure("v3 rolled back", kind="canary_rollback", details={"p": 1})) == (
        "canary_rollback",
        {"p": 1},
    )
    assert classify("build_features", RuntimeError("spark died"))[0] == "feature_job_failed"
    # a verdict is declared by the code that reached it, never inferred from the task that crashed
    assert classify("gate_challenger", RuntimeError("boom"))[0] == "rerun_interval"
    assert classify("validate_batch", RuntimeError("suite file missing"))[0] == "rerun_interval"
    assert classify("conclude_canary", RuntimeError("MLflow unreachable"))[0] == "deploy_failed"
    assert (
        classify("start_canary", RuntimeError("x"))[0]
        == classify("watch_canary", RuntimeError("x"))[0]
        == "deploy_failed"
    )


def test_every_kind_an_alert_can_have_has_a_runbook():
    from airloop.runbooks import RUNBOOKS

    kinds = {
        *TASK_KINDS.values(),
        *FAULT_KINDS.values(),
        "rerun_interval",
        "feature_job_failed",
        "deploy_failed",
        "training_pod_pending",
    }
    assert kinds <= set(RUNBOOKS), kinds - set(RUNBOOKS)


def test_the_root_error_is_the_innermost_one_and_leads_the_summary():
    try:
        try:
            {}["fare"]
        except KeyError as e:
            raise ValueError("the feature 'fare' has no source column") from e
    except ValueError as e:
        exc = wrapped(e)
    assert [type(e).__name__ for e in exception_chain(exc)] == ["AirflowFailException", "ValueError", "KeyError"]
    assert root_error(exc) == "KeyError: 'fare'"
    alert = build_alert({"ti": _ti(task_id="train_model"), "exception": exc}, "any_model")
    assert alert["summary"] == (
        "flight_delays__ingest.train_model failed (try 1): KeyError: 'fare' | the feature 'fare' has no source column"
    )
    assert alert["root_error"] == "KeyError: 'fare'" and alert["error"].splitlines()[0] == "KeyError: 'fare'"
    # a context suppressed with ``raise ... from None`` is not the cause
    try:
        try:
            {}["fare"]
        except KeyError:
            raise LookupError("no column fare in the batch") from None
    except LookupError as e:
        assert root_error(e) == "LookupError: no column fare in the batch"
    # an operator's message for people is shown without its wrapper's type name
    assert root_error(OnCallFailure("v7 did not pass the gate", kind="gate_refused")) == "v7 did not pass the gate"


def _ti(**kw):
    base = {
        "dag_id": "flight_delays__ingest",
        "task_id": "validate_batch",
        "run_id": "scheduled__2013-01-22",
        "try_number": 1,
        "log_url": "http://127.0.0.1:8080/dags/flight_delays__ingest/runs/scheduled__2013-01-22/tasks/validate_batch?try_number=1",
    }
    return SimpleNamespace(**{**base, **kw})


def test_the_alert_explains_and_links():
    exc = wrapped(
        BatchValidationError(
            "Batch flight_delays/ds=2013-01-22 failed 1 of 25 expectations:\n- column dest missing",
            summary={"failed": 1},
        )
    )
    alert = build_alert({"ti": _ti(), "exception": exc}, "flight_delays")
    assert alert["summary"] == (
        "flight_delays__ingest.validate_batch failed (try 1): BatchValidationError: "
        "Batch flight_delays/ds=2013-01-22 failed 1 of 25 expectations:"
    )
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


@pytest.mark.heavy
def test_every_configured_channel_gets_the_alert(receiver, cfg, tmp_path, monkeypatch):
    url, got = receiver
    monkeypatch.setenv(
        "AIRFLOW_CONN_SLACK_ALERTS",
        json.dumps({"conn_type": "slackwebhook", "host": f"{url}/services", "password": "T000/B000/XXXX"}),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_AIRLOOP_ALERTS_HTTP",
        json.dumps({"conn_type": "http", "host": f"{url}/hooks/oncall", "password": "tok"}),
    )
    all_channels = cfg.model_copy(
        update={"alerts": cfg.alerts.model_copy(update={"channels": ("log", "slack", "http")})}
    )
    alert = build_alert(
        {
            "ti": _ti(task_id="gate_challenger", dag_id="flight_delays__train"),
            "exception": OnCallFailure(
                "v7 did not pass the gate: 0.61 < 0.66",
                kind="gate_refused",
                details={"gate": {"challenger_score": 0.61}},
            ),
        },
        cfg.name,
    )
    root = DataRoot(str(tmp_path))
    assert deliver(all_channels, alert, root) == {"log": "sent", "slack": "sent", "http": "sent"}

    [(slack_path, _, slack), (http_path, http_headers, posted)] = sorted(
        got, key=lambda g: g[0] != "services/T000/B000/XXXX"
    )
    assert slack_path == "services/T000/B000/XXXX"
    assert "`flight_delays__train.gate_challenger` failed" in slack["text"] and "0.61 < 0.66" in slack["text"]
    assert f"<{alert['log_url']}|Task log>" in slack["text"] and "|Runbook: gate refused>" in slack["text"]
    assert http_path == "hooks/oncall" and http_headers["authorization"] == "Bearer tok"
    assert posted == json.loads(json.dumps(alert))
    [logged] = read_alerts(root, cfg.name)
    assert logged["details"] == {"gate": {"challenger_score": 0.61}} and logged["kind"] == "gate_refused"


def test_a_channel_that_is_down_does_not_silence_the_others(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_AIRLOOP_ALERTS_HTTP",
        json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{free_port()}/x"}),
    )
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
    assert (a["dag_id"], a["task_id"], a["run_id"], a["try_number"]) == (
        "flight_delays__ingest",
        "validate_batch",
        run.run_id,
        1,
    )
    assert (
        a["kind"] == "batch_quarantined"
        and "dest" in a["error"]
        and a["details"]["quarantine_uri"].endswith("ds=2013-05-20")
    )
    assert (
        a["log_url"].endswith("/tasks/validate_batch?try_number=1")
        and "/dags/flight_delays__ingest/runs/" in a["log_url"]
    )
    assert a["runbook_url"].endswith("/airloop/runbooks/batch_quarantined")


# --- a failed feature job: the driver's error first, not the spark-submit command line ---------------------

#: what spark-submit prints when a PySpark job's Python worker fails (the shape of a real run of the feature
#: job on Spark 4, shortened: Spark's log, the worker's traceback inside the JVM's PythonException, the
#: driver's traceback ending in the worker's, the shutdown log)
DRIVER_OUTPUT = """\
WARNING: Using incubator modules: jdk.incubator.vector
Using Spark's default log4j profile: org/apache/spark/log4j2-defaults.properties
26/12/02 14:08:53 INFO SparkContext: Running Spark version 4.2.0
26/12/02 14:08:54 WARN NativeCodeLoader: Unable to load native-hadoop library for your platform... \
using builtin-java classes where applicable
26/12/02 14:08:54 INFO SparkContext: Submitted application: airloop-features-any_model
26/12/02 14:09:55 ERROR Utils: Aborting task
org.apache.spark.api.python.PythonException: [PYTHON_EXCEPTION] An exception was thrown from the Python worker: \
Traceback (most recent call last):
  File "/opt/airloop/include/airloop/spark/build_features.py", line 54, in mapper
    out = compute_features(pdf, features, keep=keep, search_dirs=search_dirs)
          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/opt/airloop/include/airloop/features.py", line 188, in compute_features
    out[entry.name] = df[entry.column].astype("float64")
                      ~~^^^^^^^^^^^^^^
  File "/opt/venv/lib/python3.11/site-packages/pandas/core/frame.py", line 4113, in __getitem__
    indexer = self.columns.get_loc(key)
              ^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/opt/venv/lib/python3.11/site-packages/pandas/core/indexes/base.py", line 3819, in get_loc
    raise KeyError(key) from err
KeyError: 'trip_distance'
SQLSTATE: 38000
\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:665)
\tat org.apache.spark.sql.execution.python.PythonArrowOutput$$anon$1.read(PythonArrowOutput.scala:142)
\tat java.base/java.lang.Thread.run(Thread.java:840)
26/12/02 14:09:56 ERROR TaskSetManager: Task 0 in stage 0.0 failed 1 times; aborting job
Traceback (most recent call last):
  File "/opt/airloop/include/airloop/spark/build_features.py", line 140, in <module>
    main()
  File "/opt/airloop/include/airloop/spark/build_features.py", line 101, in run
    df.mapInPandas(make_mapper(cfg), spark_schema(cfg)).write.mode("overwrite").parquet(tmp)
  File "/opt/venv/lib/python3.11/site-packages/pyspark/python/lib/pyspark.zip/pyspark/errors/exceptions/captured.py", \
line 257, in deco
pyspark.errors.exceptions.captured.PythonException: An exception was thrown from the Python worker:
Traceback (most recent call last):
  File "/opt/airloop/include/airloop/spark/build_features.py", line 54, in mapper
    out = compute_features(pdf, features, keep=keep, search_dirs=search_dirs)
  File "/opt/airloop/include/airloop/features.py", line 188, in compute_features
    out[entry.name] = df[entry.column].astype("float64")
                      ~~^^^^^^^^^^^^^^
KeyError: 'trip_distance'
26/12/02 14:09:58 INFO SparkContext: Invoking stop() from shutdown hook
26/12/02 14:09:58 INFO SparkContext: SparkContext is stopping with exitCode 0 from run at Executors.java:539.
26/12/02 14:09:58 INFO MapOutputTrackerMasterEndpoint: MapOutputTrackerMasterEndpoint stopped!
26/12/02 14:09:58 INFO MemoryStore: MemoryStore cleared
26/12/02 14:09:58 INFO BlockManager: BlockManager stopped
26/12/02 14:09:59 INFO BlockManagerMaster: BlockManagerMaster stopped
26/12/02 14:09:59 INFO OutputCommitCoordinator$OutputCommitCoordinatorEndpoint: OutputCommitCoordinator stopped!
26/12/02 14:09:59 INFO SparkContext: Successfully stopped SparkContext (Uptime: 65672 ms)
26/12/02 14:09:59 INFO ShutdownHookManager: Shutdown hook called
26/12/02 14:09:59 INFO ShutdownHookManager: Deleting directory /tmp/spark-5e1f0c6e-3a43-4a51-9d3e-1f0e8f7d2b11
26/12/02 14:09:59 INFO ShutdownHookManager: Deleting directory \
/tmp/spark-0b8c2d44-77f1-4f6e-a2b4-6c1d9e0f3a27/pyspark-1c2e
"""


@pytest.fixture()
def failing_spark_submit(tmp_path, monkeypatch):
    """A ``spark-submit`` first on PATH that prints ``DRIVER_OUTPUT`` and exits 1, as the real one does when
    the job fails; the Spark provider's hook runs it and builds its exception from what it printed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "output.txt").write_text(DRIVER_OUTPUT)
    script = bin_dir / "spark-submit"
    script.write_text(f"#!/bin/sh\ncat '{tmp_path / 'output.txt'}'\nexit 1\n")
    script.chmod(0o755)
    # the feature operator puts the interpreter's bin folder on PATH when it is missing: keep it behind ours
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.setenv(
        "AIRFLOW_CONN_SPARK_DEFAULT",
        json.dumps({"conn_type": "spark", "host": "local[2]", "extra": {"deploy-mode": "client"}}),
    )
    return script


def test_the_error_a_job_printed_is_found_in_its_output():
    assert error_in_output(DRIVER_OUTPUT) == "KeyError: 'trip_distance'"
    # the provider keeps only the last lines: the traceback's header may be cut off
    tail = "\n".join(line.strip() for line in DRIVER_OUTPUT.splitlines()[-14:])
    assert "Traceback" not in tail and error_in_output(tail) is None
    assert error_in_output(tail, bare_lines=True) == "KeyError: 'trip_distance'"
    chained = textwrap.dedent("""\
        Traceback (most recent call last):
          File "job.py", line 3, in <module>
        KeyError: 'fare'

        The above exception was the direct cause of the following exception:

        Traceback (most recent call last):
          File "job.py", line 5, in <module>
        airloop.errors.ConfigError: pipelines/any.yaml: features.columns[0]: no source column 'fare'
        26/12/02 14:09:58 INFO SparkContext: Invoking stop() from shutdown hook
        """)
    assert (
        error_in_output(chained)
        == "airloop.errors.ConfigError: pipelines/any.yaml: features.columns[0]: no source column 'fare'"
    )
    jvm = (
        "26/12/02 14:09:58 INFO X: y\n"
        'Exception in thread "main" java.lang.OutOfMemoryError: Java heap space\n'
        "\tat x.y(Z.java:1)"
    )
    assert error_in_output(jvm) == "java.lang.OutOfMemoryError: Java heap space"
    assert (
        error_in_output("26/12/02 14:09:58 INFO SparkContext: Successfully stopped SparkContext", bare_lines=True)
        is None
    )


def test_a_spark_submit_failure_is_a_feature_job_failure_led_by_the_python_error(failing_spark_submit):
    """The Spark provider's own exception, as any task using it would raise it."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
    from airflow.sdk.exceptions import AirflowException

    hook = SparkSubmitHook(
        conn_id="spark_default", name="airloop-features-any_model", application_args=["--model", "any_model"]
    )
    with pytest.raises(AirflowException) as info:
        hook.submit("/opt/airloop/include/airloop/spark/build_features.py")
    exc = info.value
    assert str(exc).startswith("Cannot execute: spark-submit --master local[2]") and "Error code is: 1." in str(exc)
    assert classify("any_task", exc) == ("feature_job_failed", {})
    alert = build_alert(
        {"ti": _ti(dag_id="any_model__features", task_id="build_features"), "exception": exc}, "any_model"
    )
    assert alert["summary"].startswith(
        "any_model__features.build_features failed (try 1): KeyError: 'trip_distance' | "
        "Cannot execute: spark-submit --master local[2]"
    )
    assert (
        alert["error"].splitlines()[0] == "KeyError: 'trip_distance'"
        and alert["root_error"] == "KeyError: 'trip_distance'"
    )
    assert alert["kind"] == "feature_job_failed" and alert["runbook"] == "include/runbooks/feature-job-failed.md"
    # exit code only, no error in what it printed: say so, not the command line
    bare = AirflowException(
        "Cannot execute: spark-submit --master local[2] job.py. Error code is: 137.\n"
        "Last spark-submit output:\n26/12/02 14:09:58 INFO SparkContext: Running Spark version 4.2.0"
    )
    assert root_error(bare).startswith("spark-submit exited with code 137 and its output names no Python or JVM error")


def test_the_feature_operator_raises_the_drivers_error_first(failing_spark_submit, cfg, monkeypatch):
    """FeatureJobOperator.execute on a real hook: a retryable JobFailure whose alert leads with the driver's
    error, then which model and partitions failed and how; the provider's message (the command) after."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from airloop_airflow.operators import features

    parts = ["ds=2013-01-08", "ds=2013-01-09"]
    monkeypatch.setattr(features, "partitions_to_build", lambda context, model, data_root: parts)
    op = features.FeatureJobOperator(task_id="build_features", model=cfg.name)
    with pytest.raises(JobFailure) as info:
        op.execute({"dag_run": None, "outlet_events": {}})
    exc = info.value
    assert isinstance(exc, AirflowException) and not isinstance(exc, AirflowFailException)  # retried like any fault
    assert str(exc.__cause__).startswith("Cannot execute: spark-submit")
    assert exc.root_error == "KeyError: 'trip_distance'" and exc.details == {"partitions": parts, "exit_code": 1}

    alert = build_alert(
        {"ti": _ti(dag_id=f"{cfg.name}__features", task_id="build_features", try_number=3), "exception": exc}, cfg.name
    )
    assert alert["kind"] == "feature_job_failed" and alert["runbook"] == "include/runbooks/feature-job-failed.md"
    assert alert["summary"] == (
        f"{cfg.name}__features.build_features failed (try 3): KeyError: 'trip_distance' | The feature job of "
        f"{cfg.name} on 2 partition(s) (ds=2013-01-08, ds=2013-01-09) failed: spark-submit exited with code 1."
    )
    first, second = alert["error"].splitlines()[:2]
    assert first.startswith(f"The feature job of {cfg.name}") and second == "Driver error: KeyError: 'trip_distance'"
    assert "Cannot execute: spark-submit" in alert["error"] and alert["details"]["partitions"] == parts


# --- deploys: only the canary's verdict is a rollback ------------------------------------------------------


def test_a_deploy_that_never_reached_the_model_server_is_a_failed_deploy():
    from airloop.http import HttpError
    from airloop.serving.client import ModelServerClient
    from airloop_airflow.targets.local import LocalServerTarget

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(HttpError) as info:
        LocalServerTarget(ModelServerClient(url, retries=0)).prepare("4")  # start_canary's first call
    alert = build_alert(
        {"ti": _ti(dag_id="any_model__deploy", task_id="start_canary"), "exception": info.value}, "any_model"
    )
    assert alert["kind"] == "deploy_failed" and alert["runbook"] == "include/runbooks/deploy-failed.md"
    assert alert["runbook_url"].endswith("/airloop/runbooks/deploy_failed")
    assert alert["summary"] == (
        "any_model__deploy.start_canary failed (try 1): ConnectionRefusedError: [Errno 111] Connection refused"
        f" | HttpError: POST {url}/admin/reload: no answer"
    )
    # the server gone in the middle of the rollout: still no verdict, so no rollback
    assert classify("watch_canary", info.value)[0] == "deploy_failed"


@pytest.mark.heavy
def test_a_model_server_answering_503_is_a_failed_deploy():
    from airloop.http import HttpError
    from airloop.serving.client import ModelServerClient
    from airloop_airflow.targets.local import LocalServerTarget

    app = FastAPI()

    @app.post("/admin/reload")
    async def reload():
        return Response("the registry is unreachable", status_code=503)

    with serve_in_thread(app) as url, pytest.raises(HttpError) as info:
        LocalServerTarget(ModelServerClient(url, retries=0)).prepare("4")
    alert = build_alert(
        {"ti": _ti(dag_id="any_model__deploy", task_id="start_canary"), "exception": info.value}, "any_model"
    )
    assert alert["kind"] == "deploy_failed"
    assert alert["summary"] == (
        f"any_model__deploy.start_canary failed (try 1): HTTPError: HTTP Error 503: Service Unavailable "
        f"({url}/admin/reload) | HttpError: POST {url}/admin/reload: HTTP 503: the registry is unreachable"
    )


def test_only_the_canarys_verdict_is_a_rollback():
    rolled_back = OnCallFailure(
        "any_model v4 rolled back at 25% of traffic: challenger 5xx rate 0.080 > 0.02. Champion v3 serves all "
        'traffic; aliases unchanged. Figures: {"challenger_5xx_rate": 0.08}',
        kind="canary_rollback",
        details={"figures": {"challenger_5xx_rate": 0.08}, "percent": 25, "version": "4", "champion_version": "3"},
    )
    alert = build_alert(
        {"ti": _ti(dag_id="any_model__deploy", task_id="conclude_canary"), "exception": rolled_back}, "any_model"
    )
    assert alert["kind"] == "canary_rollback" and alert["runbook"] == "include/runbooks/canary-rolled-back.md"
    assert alert["summary"] == (
        "any_model__deploy.conclude_canary failed (try 1): any_model v4 rolled back at 25% of "
        "traffic: challenger 5xx rate 0.080 > 0.02. Champion v3 serves all traffic; aliases unchanged. "
        'Figures: {"challenger_5xx_rate": 0.08}'
    )
    assert alert["details"]["figures"] == {"challenger_5xx_rate": 0.08} and alert["error"] == str(rolled_back)
    # the same task failing on an error (promotion could not reach the registry) rolled nothing back
    crashed = build_alert(
        {
            "ti": _ti(dag_id="any_model__deploy", task_id="conclude_canary"),
            "exception": ConnectionRefusedError(111, "Connection refused"),
        },
        "any_model",
    )
    assert crashed["kind"] == "deploy_failed" and crashed["details"] == {}
