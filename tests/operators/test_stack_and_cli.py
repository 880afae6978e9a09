from __future__ import annotations

import collections
import configparser
import datetime as dt
import importlib
import json
import subprocess
import sys

import pytest
from airloop_local import cli, stack
from fastapi import FastAPI, Header, Request  # the fake servers' annotations must resolve at module level
from fastapi.responses import JSONResponse

from airloop.config import PIPELINES_DIR

pytestmark = pytest.mark.unit


@pytest.fixture()
def models(tmp_path, monkeypatch):
    """A pipelines folder with two models (zeta with its own connection id, alpha fed by files) and a
    broken YAML: the stack serves the two valid ones, in name order."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    text = (PIPELINES_DIR / "flight_delays.yaml").read_text()
    assert "name: flight_delays\n" in text and "kind: replay" in text and "target: local" in text
    (folder / "zeta.yaml").write_text(
        text.replace("name: flight_delays\n", "name: zeta\n", 1).replace(
            "  target: local", "  target: local\n  model_server_conn_id: zeta_endpoint", 1
        )
    )
    (folder / "alpha.yaml").write_text(
        text.replace("name: flight_delays\n", "name: alpha\n", 1).replace("kind: replay", "kind: files", 1)
    )
    (folder / "broken.yaml").write_text("name: broken\ndescription: no task, no schema\n")
    monkeypatch.setenv("AIRLOOP_PIPELINES_DIR", str(folder))
    monkeypatch.delenv("AIRLOOP_DATA_ROOT", raising=False)
    return folder


def test_airflow_cfg_follows_the_port_and_keeps_secrets(tmp_path):
    s = stack.StackSettings(state_dir=str(tmp_path), port=19123)
    path = stack.write_airflow_cfg(s)
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(path)
    assert cfg["api"]["port"] == "19123"
    assert cfg["api"]["base_url"] == "http://127.0.0.1:19123"  # workers reach the execution API here
    assert cfg["api"]["host"] == "127.0.0.1"
    assert cfg["logging"]["worker_log_server_port"] == "19124"
    assert cfg["database"]["sql_alchemy_conn"] == f"sqlite:///{tmp_path}/airflow/airflow.db"
    # a lock held longer than sqlite3's 5 s default must not end the scheduler: Airflow imports this dict
    module, name = cfg["database"]["sql_alchemy_connect_args"].rsplit(".", 1)
    assert getattr(importlib.import_module(module), name)["timeout"] >= 30
    assert cfg["core"]["executor"] == "LocalExecutor" and int(cfg["core"]["parallelism"]) <= 4
    secret, fernet = cfg["api_auth"]["jwt_secret"], cfg["core"]["fernet_key"]
    s.port = 19200
    stack.write_airflow_cfg(s)
    cfg2 = configparser.ConfigParser(interpolation=None)
    cfg2.read(path)
    assert (cfg2["api_auth"]["jwt_secret"], cfg2["core"]["fernet_key"]) == (secret, fernet)
    assert cfg2["api"]["base_url"].endswith(":19200")
    s.database_url = "postgresql://airloop@127.0.0.1:5432/airflow"
    stack.write_airflow_cfg(s)
    cfg3 = configparser.ConfigParser(interpolation=None)
    cfg3.read(path)
    assert "sql_alchemy_connect_args" not in cfg3["database"]  # psycopg2 would reject a "timeout" argument


def test_settings_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("AIRLOOP_PORT", raising=False)
    monkeypatch.delenv("AIRLOOP_DATABASE_URL", raising=False)
    stack.StackSettings(state_dir=str(tmp_path), port=18001, database_url="postgresql://x@h/db").save()
    assert stack.StackSettings.load(tmp_path).port == 18001
    assert stack.StackSettings.load(tmp_path).database_url == "postgresql://x@h/db"
    monkeypatch.setenv("AIRLOOP_PORT", "18002")
    assert stack.StackSettings.load(tmp_path).port == 18002
    assert stack.StackSettings.load(tmp_path, port=18003).port == 18003


def test_env_points_every_process_at_this_stack(tmp_path, monkeypatch, models):
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.delenv("AIRFLOW_CONN_AIRLOOP_MODEL_SERVER", raising=False)
    env = stack.StackSettings(state_dir=str(tmp_path), port=19000).env()
    assert env["AIRFLOW_HOME"] == str(tmp_path / "airflow")
    assert env["AIRLOOP_DATA_ROOT"] == str(tmp_path / "data")
    assert "AIRFLOW__CORE__EXECUTOR" not in env
    # one connection per model, named by its config: the default id, or the one it declares; its password is
    # that server's admin token
    s = stack.StackSettings(state_dir=str(tmp_path), port=19000)
    for key, port, model in (
        ("AIRFLOW_CONN_AIRLOOP_MODEL_SERVER_ALPHA", 19004, "alpha"),
        ("AIRFLOW_CONN_ZETA_ENDPOINT", 19005, "zeta"),
    ):
        conn = json.loads(env[key])
        assert (conn["schema"], conn["host"], conn["port"]) == ("http", "127.0.0.1", port)
        assert conn["password"] == s.model_server_token(model)
    assert "AIRFLOW_CONN_AIRLOOP_MODEL_SERVER" not in env and "AIRFLOW_CONN_AIRLOOP_MODEL_SERVER_BROKEN" not in env


def test_one_model_server_per_valid_config(tmp_path, models):
    s = stack.StackSettings(state_dir=str(tmp_path), port=19000)
    assert s.served_models() == ["alpha", "zeta"]  # sorted by name; the broken YAML is left out
    assert s.model_server_ports() == {"alpha": 19004, "zeta": 19005}
    assert s.model_server_url_for("zeta") == "http://127.0.0.1:19005"
    assert stack.components(s) == [*stack.COMPONENTS, "model-server-alpha", "model-server-zeta"]
    for model, port in (("alpha", "19004"), ("zeta", "19005")):
        # --allow-empty: a model without a champion answers 503 instead of failing the stack
        assert stack.component_command(s, f"model-server-{model}") == [
            sys.executable,
            "-m",
            "airloop.serving.server",
            "--model",
            model,
            "--port",
            port,
            "--data-root",
            s.data_root,
            "--allow-empty",
        ]
    assert stack.component_command(s, "api-server")[1:] == ["api-server", "--host", "127.0.0.1", "--port", "19000"]
    with pytest.raises(stack.StackError, match=r"serves no model 'broken' \(it serves \['alpha', 'zeta'\]\)"):
        s.model_server_url_for("broken")


def test_the_deploy_dag_reads_the_models_own_connection(tmp_path, monkeypatch, models):
    from airloop.config import get_pipeline
    from airloop_airflow.targets import build_target

    env = stack.StackSettings(state_dir=str(tmp_path), port=19000).env()
    for key in ("AIRFLOW_CONN_AIRLOOP_MODEL_SERVER_ALPHA", "AIRFLOW_CONN_ZETA_ENDPOINT"):
        monkeypatch.setenv(key, env[key])
    assert build_target(get_pipeline("alpha")).base_url == "http://127.0.0.1:19004"
    assert build_target(get_pipeline("zeta")).base_url == "http://127.0.0.1:19005"


def test_two_models_cannot_share_a_server_connection(tmp_path, models):
    text = (models / "zeta.yaml").read_text().replace("name: zeta\n", "name: omega\n", 1)
    (models / "omega.yaml").write_text(text)
    with pytest.raises(stack.StackError, match="omega and zeta both name the model server connection 'zeta_endpoint'"):
        stack.StackSettings(state_dir=str(tmp_path)).env()


def test_ports_checked_before_start_follow_the_models(tmp_path, models):
    s = stack.StackSettings(state_dir=str(tmp_path), port=19000)
    needed = stack._ports_needed(s, stack.components(s), running={})
    assert needed == [
        (19000, "api-server"),
        (19001, "the worker log server"),
        (19002, "the trigger log server"),
        (19003, "mlflow"),
        (19004, "model-server-alpha"),
        (19005, "model-server-zeta"),
    ]
    # a running stack that only lacks one model server checks that server's port alone
    assert stack._ports_needed(s, ["model-server-zeta"], running={"api-server": 1}) == [(19005, "model-server-zeta")]


def test_a_model_server_that_exits_does_not_fail_the_start(tmp_path, monkeypatch, models):
    s = stack.StackSettings(state_dir=str(tmp_path), port=19000)
    wanted = stack.components(s)
    alive = {c: 1 for c in wanted if c != "model-server-zeta"}
    monkeypatch.setattr(stack, "running_components", lambda _s: dict(alive))
    monkeypatch.setattr(
        stack, "health", lambda _s: {"scheduler": {"status": "healthy"}, "metadatabase": {"status": "healthy"}}
    )
    pinged = []
    monkeypatch.setattr(stack, "_http_ok", lambda url: pinged.append(url) or True)
    assert stack._await_healthy(s, wanted, tmp_path, wait_s=5) == ["zeta"]
    assert "http://127.0.0.1:19004/ping" in pinged and "http://127.0.0.1:19005/ping" not in pinged
    alive.pop("scheduler")
    with pytest.raises(stack.StackError, match="scheduler exited during start"):
        stack._await_healthy(s, wanted, tmp_path, wait_s=5)


def test_stop_ends_the_server_of_a_model_removed_since_start(tmp_path, models):
    s = stack.StackSettings(state_dir=str(tmp_path), port=19000)
    s.run_dir.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (s.run_dir / "model-server-gone.pid").write_text(str(proc.pid))
        assert stack.running_components(s) == {"model-server-gone": proc.pid}
        assert stack.stop(s, grace_s=10) == ["model-server-gone"]
        assert proc.wait(timeout=10) is not None
        assert not (s.run_dir / "model-server-gone.pid").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stack_status_lists_each_models_server(tmp_path, capsys, models):
    import socket

    with socket.socket() as sock:  # a port nothing listens on: the API server is "not reachable"
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert cli.main(["--state-dir", str(tmp_path), "stack", "status", "--port", str(port)]) == 1
    out = capsys.readouterr().out
    assert f"model-server-alpha  stopped  http://127.0.0.1:{port + 4}  (connection airloop_model_server_alpha)" in out
    assert f"model-server-zeta   stopped  http://127.0.0.1:{port + 5}  (connection zeta_endpoint)" in out
    assert f"not served: {models / 'broken.yaml'}: " in out


def test_replay_refuses_a_model_fed_by_files(tmp_path, capsys, monkeypatch, models):
    state = tmp_path / "state"
    # the CLI exports these for its own process; monkeypatch restores them afterwards
    monkeypatch.setenv("AIRLOOP_HOME", str(state))
    monkeypatch.setenv("AIRLOOP_DATA_ROOT", str(state / "data"))
    assert cli.main(["--state-dir", str(state), "replay", "--model", "alpha", "--days", "1"]) == 2
    err = capsys.readouterr().err
    assert (
        f"alpha has source.kind files: its batches are dropped by the upstream system at "
        f"{state / 'data'}/landing/alpha/ds=<YYYY-MM-DD>/flights.csv; replay only fills models whose "
        "source.kind is replay"
    ) in err
    assert not (state / "data" / "landing").exists()


def test_password_is_hidden_in_printed_urls():
    assert stack._safe_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert stack._safe_url("sqlite:////x/airflow.db") == "sqlite:////x/airflow.db"


def test_start_refuses_a_taken_port(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        s = stack.StackSettings(state_dir=str(tmp_path), port=port)
        with pytest.raises(stack.StackError, match=f"port {port} on 127.0.0.1 is taken"):
            stack.start(s)


def test_cli_quarantine_commands_without_a_stack(tmp_path, capsys, cfg, monkeypatch):
    state = tmp_path / "state"
    # the CLI exports these for its own process; monkeypatch restores them afterwards
    monkeypatch.setenv("AIRLOOP_HOME", str(state))
    monkeypatch.setenv("AIRLOOP_DATA_ROOT", str(state / "data"))
    assert (
        cli.main(
            [
                "--state-dir",
                str(state),
                "replay",
                "--start",
                "2013-01-10",
                "--days",
                "1",
                "--corrupt",
                "2013-01-10:missing_column",
            ]
        )
        == 0
    )
    from airloop.errors import BatchValidationError
    from airloop.ingest import Interval, ingest_batch
    from airloop.quarantine import validate_partition
    from airloop.storage import DataRoot

    root = DataRoot(state / "data")
    ingest_batch(cfg, root, partition="ds=2013-01-10", interval=Interval(None, None), run_id="r")
    with pytest.raises(BatchValidationError):
        validate_partition(cfg, root, "ds=2013-01-10")
    capsys.readouterr()
    assert cli.main(["--state-dir", str(state), "quarantine", "list"]) == 0
    out = capsys.readouterr().out
    assert "flight_delays/ds=2013-01-10  quarantined" in out and "report: file://" in out
    assert (
        cli.main(
            ["--state-dir", str(state), "quarantine", "reject", "flight_delays", "2013-01-10", "--reason", "resent"]
        )
        == 0
    )
    assert cli.main(["--state-dir", str(state), "quarantine", "list"]) == 0
    assert "no batches in quarantine awaiting a decision" in capsys.readouterr().out
    # a decision on a batch already decided is a domain failure (1), not a usage error
    assert (
        cli.main(["--state-dir", str(state), "quarantine", "reject", "flight_delays", "2013-01-10", "--reason", "x"])
        == 1
    )
    assert "already rejected" in capsys.readouterr().err


def test_release_needs_a_running_stack(tmp_path, capsys, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv("AIRLOOP_HOME", str(state))
    monkeypatch.setenv("AIRLOOP_DATA_ROOT", str(state / "data"))
    assert cli.main(["--state-dir", str(state), "quarantine", "release", "flight_delays", "ds=2013-01-01"]) == 2
    assert "no quarantined batch flight_delays/ds=2013-01-01" in capsys.readouterr().err


def test_cli_alias_history_prints_first_settings_and_removals(tmp_path, capsys, monkeypatch):
    """A promotion removes ``challenger`` (version None) and a first champion replaces nothing (None):
    the history command prints both instead of failing on them."""
    from airloop import registry
    from airloop.storage import DataRoot

    state = tmp_path / "state"
    monkeypatch.setenv("AIRLOOP_HOME", str(state))
    monkeypatch.setenv("AIRLOOP_DATA_ROOT", str(state / "data"))
    root = DataRoot(state / "data")
    registry._record(root, "flight_delays", "champion", "1", None, by="train/r1", why="gate passed: no champion yet")
    registry._record(root, "flight_delays", "challenger", None, "2", by="deploy/r2", why="v2 is the champion now")
    capsys.readouterr()
    assert cli.main(["--state-dir", str(state), "models", "history", "flight_delays"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert "champion   v1      (was unset)  by train/r1: gate passed: no champion yet" in lines[0]
    assert "challenger removed (was v2)  by deploy/r2: v2 is the champion now" in lines[1]


# -- the command line's behaviour: help, exit codes, unknown names, the stack messages point at ------------------
def _subparsers(parser):
    """(path, subparser) of every command and subcommand, depth first."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for path, deeper in _subparsers(sub):
                    yield f"{name} {path}", deeper


def test_top_level_help_lists_every_command_with_a_one_line_description():
    import argparse

    parser = cli.build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    described = {c.dest: c.help for c in commands._choices_actions}
    assert set(described) == set(commands.choices)
    text = parser.format_help()
    for name, help_text in described.items():
        assert help_text and len(help_text) <= 56, name  # one line of an 80-column help
        assert f"    {name}" in text and help_text in text, name


def test_every_option_and_argument_of_every_command_has_help():
    import argparse

    missing = [
        f"{path}: {a.option_strings or a.dest}"
        for path, sub in [("airloop", cli.build_parser()), *_subparsers(cli.build_parser())]
        for a in sub._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction) and not a.help
    ]
    assert missing == []
    for path, sub in _subparsers(cli.build_parser()):  # every subcommand is described in its parent's help
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(c.help for c in action._choices_actions), path


def test_exit_codes_ok_failure_and_usage(tmp_path, capsys, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv("AIRLOOP_HOME", str(state))
    monkeypatch.setenv("AIRLOOP_DATA_ROOT", str(state / "data"))
    assert cli.main(["--state-dir", str(state), "models", "history", "flight_delays"]) == 0
    assert "no alias changes recorded for flight_delays" in capsys.readouterr().out
    # a domain failure: the stack is not running
    assert cli.main(["--state-dir", str(state), "run", "flight_delays__drift", "--start", "2013-07-01"]) == 1
    assert "the local stack is not running" in capsys.readouterr().err
    # usage errors: argparse's own (unknown command, bad choice, bad value), and the CLI's
    for argv in (["nosuch"], ["stack", "jump"], ["replay", "--days", "0"], ["alerts", "--last", "x"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["--state-dir", str(state), *argv])
        assert e.value.code == 2, argv
    assert cli.main(["--state-dir", str(state), "replay", "--corrupt", "2013-01-02:melted"]) == 2
    assert "the kind after ':' must be one of" in capsys.readouterr().err
    assert cli.main(["--state-dir", str(state), "webhook", "send", "nosuch", "--day", "2013-01-02"]) == 2
    assert "no webhook source named 'nosuch'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "history", "nosuch"],
        ["models", "rollback", "nosuch", "1", "--reason", "x"],
        ["drift", "history", "nosuch"],
        ["alerts", "nosuch"],
        ["quarantine", "list", "--model", "nosuch"],
        ["quarantine", "show", "nosuch", "2013-01-02"],
        ["quarantine", "reject", "nosuch", "2013-01-02", "--reason", "x"],
        ["quarantine", "release", "nosuch", "2013-01-02"],
        ["replay", "--model", "nosuch"],
        ["traffic", "nosuch", "rows.csv"],
        ["model", "check", "nosuch"],
    ],
)
def test_an_unknown_model_is_a_usage_error_with_a_message(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.setenv("AIRLOOP_DATA_ROOT", str(tmp_path / "data"))
    assert cli.main(["--state-dir", str(tmp_path / "state"), *argv]) == 2
    err = capsys.readouterr().err
    assert "no pipeline config named 'nosuch'" in err and "known models: [" in err and "flight_delays" in err


def test_an_unknown_version_or_batch_is_a_usage_error(tmp_path, capsys, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    class NoVersions:  # a registry without that version (the real call: MlflowClient.get_model_version)
        def __init__(self, *a, **kw):
            pass

        def get_model_version(self, name, version):
            raise MlflowException(f"no version {version} of {name}", error_code=RESOURCE_DOES_NOT_EXIST)

    monkeypatch.setattr(mlflow, "MlflowClient", NoVersions)
    monkeypatch.setenv("AIRLOOP_DATA_ROOT", str(tmp_path / "data"))
    argv = ["--state-dir", str(tmp_path / "state"), "models", "rollback", "flight_delays", "999", "--reason", "x"]
    assert cli.main(argv) == 2
    assert "flight_delays has no version 999" in capsys.readouterr().err
    argv = ["--state-dir", str(tmp_path / "state"), "quarantine", "show", "flight_delays", "2013-01-02"]
    assert cli.main(argv) == 2
    assert "no quarantined batch flight_delays/ds=2013-01-02" in capsys.readouterr().err


def test_airflow_help_is_airflows_own(tmp_path, monkeypatch):
    """``-h`` after ``airflow`` goes to Airflow (argparse would otherwise answer with airloop's help)."""
    for argv in (["airflow", "-h"], ["airflow", "--help"], ["airflow", "dags", "list", "-o", "json"]):
        assert cli.build_parser().parse_args(argv).args == argv[1:]
    called = []
    monkeypatch.setattr(
        stack, "run_airflow", lambda s, *args, check: called.append(args) or subprocess.CompletedProcess(args, 0)
    )
    assert cli.main(["--state-dir", str(tmp_path), "airflow", "-h"]) == 0
    assert called == [("-h",)]


def test_messages_point_at_the_stack_of_the_state_dir(tmp_path, capsys, monkeypatch):
    from airloop_local.cli import common

    monkeypatch.setattr(stack, "admin_password", lambda s: None)
    other = stack.StackSettings(state_dir=str(tmp_path / "other state"))
    common.print_login(other)
    out = capsys.readouterr().out
    assert f"Stop with:   airloop --state-dir '{tmp_path}/other state' stack stop" in out
    assert "make stop" not in out
    common.print_login(stack.StackSettings(state_dir=str(stack.default_state_dir())))
    assert "Stop with:   make stop   (or .venv/bin/airloop stack stop)" in capsys.readouterr().out
    assert cli.main(["--state-dir", str(tmp_path / "x"), "run", "m__drift", "--start", "2013-07-01"]) == 1
    assert f"start it with `airloop --state-dir {tmp_path / 'x'} stack start`" in capsys.readouterr().err


# -- the HTTP clients of the local stack (Airflow REST, webhooks, health), against small fake servers ----------
def _fake_airflow():
    """An Airflow API server that is busy (500) on the first call of each kind, knows DAG ``d`` only from the
    third look, and keeps the runs it is given (409 for a run id it has)."""
    app, calls, runs = FastAPI(), collections.Counter(), {}

    def busy(kind: str) -> JSONResponse | None:
        calls[kind] += 1
        return JSONResponse({"detail": "database is locked"}, status_code=500) if calls[kind] == 1 else None

    @app.post("/auth/token")
    def token(body: dict):
        return {"access_token": f"token-of-{body['username']}"}

    @app.get("/api/v2/dags/{dag_id}")
    def dag(dag_id: str):
        calls["dag"] += 1
        return {"dag_id": dag_id} if calls["dag"] >= 3 else JSONResponse({"detail": "no dag"}, status_code=404)

    @app.get("/api/v2/dags/{dag_id}/dagRuns")
    def dag_runs(dag_id: str, request: Request, authorization: str = Header("")):
        assert authorization == "Bearer token-of-admin" and request.query_params["limit"] == "1000"
        return busy("list") or {"dag_runs": list(runs.values())}

    @app.post("/api/v2/dags/{dag_id}/dagRuns")
    def trigger(dag_id: str, body: dict):
        refused = busy("trigger")
        if refused:
            return refused
        if body.get("dag_run_id") in runs:
            return JSONResponse({"detail": "exists"}, status_code=409)
        run = {"dag_run_id": body.get("dag_run_id") or "manual__1", "state": "queued", **body}
        runs[run["dag_run_id"]] = run
        return run

    return app, calls


@pytest.mark.heavy
def test_airflow_api_retries_what_a_retry_can_fix_and_nothing_else():
    from airloop_local.airflow_api import AirflowApi, ApiError

    from tests.conftest import serve_in_thread

    app, calls = _fake_airflow()
    with serve_in_thread(app) as url:
        api = AirflowApi(url, "admin", "pw", backoff=0.01)
        assert api.wait_for_dag("d", timeout_s=30) == {"dag_id": "d"}  # 404 twice while the DAG is parsed
        assert api.trigger_interval("d", dt.date(2013, 1, 2)) == "replay__2013-01-02"  # a 500 first: retried
        assert api.trigger_interval("d", dt.date(2013, 1, 2)) == "replay__2013-01-02"  # 409: that run exists
        assert [r["data_interval_end"] for r in api.dag_runs("d")] == ["2013-01-03T00:00:00+00:00"]
        assert calls["list"] == 2  # the list answered 500 once and was asked again
        calls["trigger"] = 0
        with pytest.raises(ApiError) as e:  # a run without a fixed id is never re-sent: it could start twice
            api.trigger("d", {})
        assert e.value.status == 500 and "database is locked" in str(e.value)


@pytest.mark.heavy
def test_webhook_delivery_is_resent_with_the_same_id_while_the_server_is_busy(tmp_path):
    from airloop_local.webhook_client import WebhookSender, deliver

    from tests.conftest import free_port, serve_in_thread

    app, seen = FastAPI(), []

    @app.post("/airloop/webhooks/{source}")
    async def hook(source: str, request: Request):
        body = json.loads(await request.body())
        seen.append((request.headers["webhook-id"], body))
        if len(seen) == 1:
            return JSONResponse({"detail": "busy"}, status_code=503)
        if body["day"] == "2013-07-16":
            return JSONResponse({"detail": "no webhook-signature matches the body"}, status_code=401)
        return JSONResponse({"dag_run_id": f"webhook__{source}__{request.headers['webhook-id']}"}, status_code=202)

    with serve_in_thread(app) as url:
        s = stack.StackSettings(state_dir=str(tmp_path), port=int(url.rsplit(":", 1)[1]))
        status, answer = deliver(s, "flight-delays-landing", dt.date(2013, 7, 15), backoff=0.01)
        assert status == 202 and answer["dag_run_id"].startswith("webhook__flight-delays-landing__msg_")
        assert seen[0] == seen[1]  # the same delivery (id and body) again after the 503
        assert seen[0][1] == {
            "source_uri": f"{s.data_root}/landing/flight_delays/ds=2013-07-15/flights.csv",
            "day": "2013-07-15",
        }
        # one attempt, and every answer comes back with its status; deliver() makes a refusal an error
        refused = WebhookSender(s).send("flight-delays-landing", dt.date(2013, 7, 16), delivery_id="msg_x")
        assert refused == (401, {"detail": "no webhook-signature matches the body"})
        with pytest.raises(stack.StackError, match="webhook flight-delays-landing for 2013-07-16 refused: HTTP 401"):
            deliver(s, "flight-delays-landing", dt.date(2013, 7, 16), backoff=0.01)
    nobody = stack.StackSettings(state_dir=str(tmp_path), port=free_port())
    assert stack.health(nobody) is None and stack._http_ok(f"{nobody.base_url}/ping") is False
