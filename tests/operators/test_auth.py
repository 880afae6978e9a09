"""Authentication and secrets of the local stack: who may change what, and which process holds which secret.

* unit: each component's environment carries only the secrets it needs; secret files are private; the
  MLflow hook and its context manager; the plugin's API docs need a login.
* heavy: a real MLflow ``basic-auth`` server as the stack runs it (users created the stack's way): anonymous
  writes get 401, the read-only user can read but not write, the writer (through the ``airloop_mlflow``
  connection) moves aliases, and an operator runs with the connection's credentials.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import uuid

import pytest
from airloop_local import mlflow_auth, stack
from fastapi.testclient import TestClient

from airloop.config import PIPELINES_DIR
from tests.conftest import REPO, free_port, require_heavy

pytestmark = pytest.mark.unit


@pytest.fixture()
def two_models(tmp_path, monkeypatch):
    """A pipelines folder with two models, so that a model server holding the other's token shows."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    text = (PIPELINES_DIR / "flight_delays.yaml").read_text()
    for name in ("alpha", "zeta"):
        (folder / f"{name}.yaml").write_text(text.replace("name: flight_delays\n", f"name: {name}\n", 1))
    monkeypatch.setenv("AIRLOOP_PIPELINES_DIR", str(folder))
    monkeypatch.delenv("AIRLOOP_DATA_ROOT", raising=False)
    s = stack.StackSettings(state_dir=str(tmp_path / "state"), port=19100)
    assert s.served_models() == ["alpha", "zeta"]
    return s


def _secrets(s: stack.StackSettings) -> dict[str, str]:
    """Every secret of the stack, by what it is."""
    out = {f"webhook secret {k}": v for k, v in s._webhook_secrets().items()}
    out |= {f"token of {m}": t for m, t in s.model_server_tokens().items()}
    out |= {f"mlflow {k}": v for k, v in s.mlflow_credentials().items()}
    return out


#: what each component may hold, by the name _secrets gives it (model servers: their own token only)
NEEDS = {
    "mlflow": {"mlflow flask_secret_key"},
    "api-server": {"webhook secret"},
    "scheduler": {"token of", f"mlflow {mlflow_auth.WRITER}"},
    "triggerer": {"token of"},
    "dag-processor": set(),
}


def allowed(component: str, secret_name: str) -> bool:
    if component.startswith(stack.MODEL_SERVER + "-"):
        model = component.removeprefix(stack.MODEL_SERVER + "-")
        return secret_name in (f"token of {model}", f"mlflow {mlflow_auth.READER}")
    return any(secret_name.startswith(n) for n in NEEDS[component])


def carried(env: dict[str, str], secrets: dict[str, str]) -> set[str]:
    """The secrets whose value appears anywhere in ``env`` (a connection's JSON included)."""
    return {name for name, value in secrets.items() if any(value in v for v in env.values())}


def test_each_component_gets_only_the_secrets_it_needs(two_models, monkeypatch):
    s = two_models
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "from-the-shell")  # the shell's credentials reach nobody
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", '{"conn_type": "slack", "password": "xoxb-shell"}')
    monkeypatch.setattr(stack, "_mlflow_auth", lambda s, create_users: None)  # no MLflow users in a unit test
    secrets = _secrets(s)
    assert len(secrets) >= 6
    for component in stack.components(s):
        env = stack.component_env(s, component)
        extra = {n for n in carried(env, secrets) if not allowed(component, n)}
        assert not extra, f"{component} carries {sorted(extra)}"
        assert env.get("MLFLOW_TRACKING_PASSWORD") != "from-the-shell", component
        assert ("xoxb-shell" in env.get("AIRFLOW_CONN_SLACK_ALERTS", "")) == (component in stack.TASK_RUNNERS)
    # and each gets what it needs
    server = stack.component_env(s, "model-server-zeta")
    assert server["AIRLOOP_MODEL_SERVER_TOKEN"] == s.model_server_token("zeta")
    assert server["MLFLOW_TRACKING_USERNAME"] == mlflow_auth.READER
    assert server["MLFLOW_TRACKING_PASSWORD"] == s.mlflow_credentials()[mlflow_auth.READER]
    sched = stack.component_env(s, "scheduler")
    conn = json.loads(sched["AIRFLOW_CONN_AIRLOOP_MODEL_SERVER_ALPHA"])
    assert (conn["host"], conn["port"], conn["password"]) == ("127.0.0.1", 19104, s.model_server_token("alpha"))
    mlflow_conn = json.loads(sched["AIRFLOW_CONN_AIRLOOP_MLFLOW"])
    assert (mlflow_conn["port"], mlflow_conn["login"]) == (s.mlflow_port, mlflow_auth.WRITER)
    assert stack.component_env(s, "mlflow")["MLFLOW_AUTH_CONFIG_PATH"] == str(s.mlflow_auth_ini)
    api = stack.component_env(s, "api-server")
    assert all(f"AIRFLOW_CONN_{i.upper()}" in api for i in s._webhook_secrets())


def test_tokens_differ_per_model_and_are_kept(two_models):
    s = two_models
    tokens = s.model_server_tokens()
    assert len(set(tokens.values())) == 2 and all(len(t) >= 40 for t in tokens.values())
    assert stack.StackSettings(state_dir=s.state_dir).model_server_tokens() == tokens  # generated once


def test_secret_files_and_logs_are_private(two_models, monkeypatch):
    s = two_models
    monkeypatch.setattr(stack, "_mlflow_auth", lambda s, create_users: None)
    s.logs_dir.mkdir(parents=True)
    (s.logs_dir / "api-server.log").write_text("old\n")
    s.logs_dir.chmod(0o755)
    stack.write_airflow_cfg(s)
    stack.prepare_secrets(s)
    state = os.path.realpath(s.state_dir)
    for name in ("webhook_secrets.json", "model_server_tokens.json", "mlflow_credentials.json"):
        assert stat.S_IMODE(os.stat(f"{state}/{name}").st_mode) == 0o600, name
    assert stat.S_IMODE(s.airflow_passwords_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(s.logs_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((s.logs_dir / "api-server.log").stat().st_mode) == 0o600
    # the admin password exists before Airflow starts, so Airflow never generates (and prints) one
    assert stack.admin_password(s) and len(stack.admin_password(s)) >= 32
    before = stack.admin_password(s)
    stack.prepare_secrets(s)
    assert stack.admin_password(s) == before
    cfg = (s.airflow_home / "airflow.cfg").read_text()
    assert "file_task_handler_new_file_permissions = 0o600" in cfg
    # a log the launch just opened (with the default umask) is private before the component writes to it
    fresh = s.logs_dir / "scheduler.log"
    fresh.write_text("")
    fresh.chmod(0o644)
    stack.component_env(s, "scheduler")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_status_and_login_name_the_password_file_not_the_password(two_models, monkeypatch, capsys):
    from airloop_local.cli import common

    s = two_models
    monkeypatch.setattr(stack, "_mlflow_auth", lambda s, create_users: None)
    stack.write_airflow_cfg(s)
    stack.prepare_secrets(s)
    common.print_login(s)
    out = capsys.readouterr().out
    assert stack.admin_password(s) not in out
    assert str(s.airflow_passwords_file) in out
    for secret in _secrets(s).values():
        assert secret not in out


# -- the MLflow hook ----------------------------------------------------------------------------------------
def test_mlflow_hook_reads_the_connection(monkeypatch):
    from airloop_airflow.hooks.mlflow import MlflowHook, mlflow_credentials

    conn = {"conn_type": "http", "host": "127.0.0.1", "port": 5999, "login": "w", "password": "pw-123"}
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOOP_MLFLOW", json.dumps(conn))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///before.db")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "someone-elses")
    assert MlflowHook().tracking_env() == {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999",
        "MLFLOW_TRACKING_USERNAME": "w",
        "MLFLOW_TRACKING_PASSWORD": "pw-123",
    }
    with pytest.raises(RuntimeError), mlflow_credentials():
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999"
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "pw-123"
        raise RuntimeError("the task failed")
    # restored, also after an error
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///before.db"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "someone-elses"
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ


def test_without_the_connection_the_process_environment_is_used(monkeypatch):
    from airloop_airflow.hooks.mlflow import mlflow_credentials

    monkeypatch.delenv("AIRFLOW_CONN_AIRLOOP_MLFLOW", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///own.db")
    with mlflow_credentials() as env:
        assert env == {} and os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///own.db"


def test_every_operator_that_reaches_mlflow_runs_with_the_connection():
    """The operators whose execute talks to MLflow (registry, drift report, training) are wrapped."""
    from airloop_airflow.operators.canary import ConcludeCanaryOperator, StartCanaryOperator
    from airloop_airflow.operators.drift import DriftCheckOperator
    from airloop_airflow.operators.training import (
        ChampionChallengerGateOperator,
        ModelRollbackOperator,
        TrainModelOperator,
    )

    for op in (
        TrainModelOperator,
        ChampionChallengerGateOperator,
        ModelRollbackOperator,
        StartCanaryOperator,
        ConcludeCanaryOperator,
        DriftCheckOperator,
    ):
        chain, f = [], op.execute
        while f is not None:  # Airflow wraps execute too
            chain.append(f)
            f = getattr(f, "__wrapped__", None)
        assert any(getattr(f, "uses_mlflow", False) for f in chain), f"{op.__name__}.execute is not @uses_mlflow"


# -- the plugin's API docs ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plugin():
    spec = importlib.util.spec_from_file_location("airloop_plugin_auth", REPO / "plugins" / "airloop_plugin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plugin_docs_need_a_login(plugin):
    from airflow.api_fastapi.core_api.security import get_user

    raw = TestClient(plugin.app)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert raw.get(path).status_code in (401, 403), path
    plugin.app.dependency_overrides[get_user] = lambda: object()
    try:
        logged_in = TestClient(plugin.app)
        spec = logged_in.get("/openapi.json")
        assert spec.status_code == 200 and "/quarantine" in spec.json()["paths"]
        assert "/airloop/openapi.json" in logged_in.get("/docs").text
        assert "/airloop/openapi.json" in logged_in.get("/redoc").text
    finally:
        plugin.app.dependency_overrides.clear()


# -- a real MLflow basic-auth server, set up as the stack sets it up ----------------------------------------
@pytest.fixture(scope="module")
def auth_mlflow(tmp_path_factory):
    """MLflow's basic-auth app on a free port, its users created by the stack (``prepare_secrets``' MLflow
    part) and its environment from ``component_env``; yields the settings and the server's URL."""
    require_heavy("an MLflow server")
    state = tmp_path_factory.mktemp("auth-state")
    mlflow_port = free_port()
    s = stack.StackSettings(state_dir=str(state), port=mlflow_port - 3)  # MLflow listens on port + 3
    stack._mlflow_auth(s, create_users=True)
    cmd = stack.component_command(s, "mlflow")
    env = stack.component_env(s, "mlflow")
    log = (state / "mlflow.log").open("ab")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{mlflow_port}"
    try:
        import time

        deadline = time.monotonic() + 120
        while not stack._http_ok(f"{url}/health"):
            assert proc.poll() is None and time.monotonic() < deadline, (state / "mlflow.log").read_text()[-3000:]
            time.sleep(0.5)
        yield s, url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()


def _post(url: str, path: str, body: dict, user: tuple[str, str] | None = None) -> int:
    from airloop.http import HttpClient

    headers = {}
    if user:
        import base64

        headers["Authorization"] = "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    return HttpClient(url, retries=0).post(path, json_body=body, headers=headers, ok=tuple(range(200, 600))).status


@pytest.mark.heavy
def test_mlflow_refuses_anonymous_and_read_only_writes(auth_mlflow):
    s, url = auth_mlflow
    creds = s.mlflow_credentials()
    writer, reader = (mlflow_auth.WRITER, creds[mlflow_auth.WRITER]), (mlflow_auth.READER, creds[mlflow_auth.READER])
    name = f"m-{uuid.uuid4().hex[:6]}"
    create, alias = "/api/2.0/mlflow/registered-models/create", "/api/2.0/mlflow/registered-models/alias"
    assert _post(url, create, {"name": name}) == 401
    assert _post(url, create, {"name": name}, (mlflow_auth.WRITER, "wrong")) == 401
    assert _post(url, create, {"name": name}, reader) == 403  # read-only: creates nothing either
    assert _post(url, "/api/2.0/mlflow/experiments/create", {"name": name}, reader) == 403
    assert _post(url, create, {"name": name}, writer) == 200
    assert _post(url, alias, {"name": name, "alias": "champion", "version": "1"}) == 401
    assert _post(url, alias, {"name": name, "alias": "champion", "version": "1"}, reader) == 403
    assert _post(url, "/api/2.0/mlflow/users/create", {"username": "x", "password": "y" * 14}, writer) == 403
    from airloop.http import HttpClient

    assert HttpClient(url, retries=0).get("/health").status == 200  # the stack's health check needs no user
    for f in (s.mlflow_auth_ini, s.mlflow_auth_db.parent.parent / "mlflow.log"):
        text = f.read_text()
        assert not [k for k, v in creds.items() if v in text], f  # no password in its log or ini


@pytest.mark.heavy
def test_an_operator_moves_an_alias_with_the_connections_credentials(auth_mlflow, use_tracking_uri, monkeypatch):
    """The on-call rollback operator against the authenticated server: it works with ``airloop_mlflow``,
    and the same code without the connection gets MLflow's 401."""
    from mlflow import MlflowClient

    from airloop_airflow.operators.training import ModelRollbackOperator

    s, url = auth_mlflow
    creds = s.mlflow_credentials()
    conn = s.mlflow_connection()["AIRFLOW_CONN_AIRLOOP_MLFLOW"]
    use_tracking_uri(url)
    name = f"roll-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", mlflow_auth.WRITER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", creds[mlflow_auth.WRITER])
    client = MlflowClient(url)
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment(name)).info.run_id
    v1 = client.create_model_version(name, f"runs:/{run}/model", run_id=run).version
    v2 = client.create_model_version(name, f"runs:/{run}/model", run_id=run).version
    client.set_registered_model_alias(name, "champion", v2)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")

    op = ModelRollbackOperator(task_id="rollback", model=name, version=v1, reason="test", data_root=s.data_root)
    ctx = {"dag": type("D", (), {"dag_id": "d"})(), "run_id": "r"}
    monkeypatch.delenv("AIRFLOW_CONN_AIRLOOP_MLFLOW", raising=False)
    with pytest.raises(Exception, match="401"):
        op.execute(ctx)
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOOP_MLFLOW", conn)
    op.execute(ctx)
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ  # the credentials were the task's only
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", mlflow_auth.READER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", creds[mlflow_auth.READER])
    assert MlflowClient(url).get_model_version_by_alias(name, "champion").version == v1


@pytest.mark.heavy
def test_the_cli_rolls_back_as_the_stacks_writer(auth_mlflow, monkeypatch):
    """``airloop models rollback`` reads the writer's password from the state folder."""
    from airloop_local.cli import models

    s, url = auth_mlflow
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with models.stack_mlflow(s, mlflow_auth.WRITER) as uri:
        assert uri == url and os.environ["MLFLOW_TRACKING_USERNAME"] == mlflow_auth.WRITER
        from mlflow import MlflowClient

        MlflowClient(uri).create_registered_model(f"cli-{uuid.uuid4().hex[:6]}")
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ


def test_the_mlflow_users_are_created_without_a_password_on_a_command_line(tmp_path, monkeypatch):
    """The user-creating process gets the path of the credentials file, never a password in its argv."""
    seen = []
    monkeypatch.setattr(
        subprocess, "run", lambda cmd, **kw: seen.append((cmd, kw)) or subprocess.CompletedProcess(cmd, 0, "", "")
    )
    s = stack.StackSettings(state_dir=str(tmp_path))
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "auth.db").write_text("")
    stack._mlflow_auth(s, create_users=True)
    [(cmd, kw)] = seen
    assert cmd[:3] == [sys.executable, "-m", "airloop_local.mlflow_auth"]
    assert not [v for v in s.mlflow_credentials().values() if any(v in part for part in cmd)]
    assert kw["env"]["MLFLOW_AUTH_CONFIG_PATH"] == str(s.mlflow_auth_ini)
    ini = s.mlflow_auth_ini.read_text()
    assert "admin_password" not in ini and "default_permission = READ" in ini
    assert stat.S_IMODE(s.mlflow_auth_ini.stat().st_mode) == 0o600
