from __future__ import annotations

import configparser
import importlib
import subprocess
import sys

import pytest
from airloop_local import cli, stack

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
    # one connection per model, named by its config: the default id, or the one it declares
    assert env["AIRFLOW_CONN_AIRLOOP_MODEL_SERVER_ALPHA"] == "http://127.0.0.1:19004"
    assert env["AIRFLOW_CONN_ZETA_ENDPOINT"] == "http://127.0.0.1:19005"
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
        f"{state / 'data'}/landing/alpha/ds=<YYYY-MM-DD>/flights.csv; replay only fills models whose source "
        "is the nycflights13 replay"
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
    assert (
        cli.main(["--state-dir", str(state), "quarantine", "reject", "flight_delays", "2013-01-10", "--reason", "x"])
        == 2
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
