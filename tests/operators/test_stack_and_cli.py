from __future__ import annotations

import configparser
import importlib

import pytest

from airloop_airflow import cli, stack

pytestmark = pytest.mark.unit


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


def test_env_points_every_process_at_this_stack(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.delenv("AIRLOOP_DATA_ROOT", raising=False)
    env = stack.StackSettings(state_dir=str(tmp_path)).env()
    assert env["AIRFLOW_HOME"] == str(tmp_path / "airflow")
    assert env["AIRLOOP_DATA_ROOT"] == str(tmp_path / "data")
    assert "AIRFLOW__CORE__EXECUTOR" not in env


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
    assert cli.main(["--state-dir", str(state), "replay", "--start", "2013-01-10", "--days", "1",
                     "--corrupt", "2013-01-10:missing_column"]) == 0
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
    assert cli.main(["--state-dir", str(state), "quarantine", "reject", "flight_delays", "2013-01-10", "--reason", "resent"]) == 0
    assert cli.main(["--state-dir", str(state), "quarantine", "list"]) == 0
    assert "no batches in quarantine awaiting a decision" in capsys.readouterr().out
    assert cli.main(["--state-dir", str(state), "quarantine", "reject", "flight_delays", "2013-01-10", "--reason", "x"]) == 2
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
