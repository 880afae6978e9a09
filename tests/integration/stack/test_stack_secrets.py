"""The secrets of the real local stack: which process holds which, and that no log holds any.

Read from the running processes themselves (``/proc/<pid>/environ`` of each component and of every process
it started) and from every file the stack logged to, after the other tests of this folder (and this
module's deployment through the stack's MLflow and model server) ran through it: the log test comes last.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from airloop_local import mlflow_auth, stack

from airloop.http import HttpClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _secrets(s: stack.StackSettings) -> dict[str, str]:
    """Every secret of the stack, named by what it is."""
    out = {f"webhook secret {k}": v for k, v in s._webhook_secrets().items()}
    out |= {f"token of {m}": t for m, t in s.model_server_tokens().items()}
    out |= {f"mlflow {k}": v for k, v in s.mlflow_credentials().items()}
    out["airflow admin password"] = stack.admin_password(s) or ""
    assert all(out.values()), [k for k, v in out.items() if not v]
    return out


def _allowed(component: str, name: str) -> bool:
    """What a component may hold (see ``stack.component_env``)."""
    if component.startswith(stack.MODEL_SERVER + "-"):
        model = component.removeprefix(stack.MODEL_SERVER + "-")
        return name in (f"token of {model}", f"mlflow {mlflow_auth.READER}")
    needs = {
        "mlflow": ("mlflow flask_secret_key",),
        "api-server": ("webhook secret",),
        "scheduler": ("token of", f"mlflow {mlflow_auth.WRITER}"),
        "triggerer": ("token of",),
        "dag-processor": (),
    }[component]
    return name.startswith(needs) if needs else False


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # ended meanwhile
        return b""


def test_no_process_carries_a_secret_it_does_not_need(running_stack):
    s, _ = running_stack
    secrets = _secrets(s)
    running = stack.running_components(s)
    assert set(running) >= set(stack.components(s)), running
    found = {}
    for component, leader in running.items():
        for pid in _tree(leader):
            env = _environ(pid)
            held = {n for n, v in secrets.items() if v.encode() in env}
            extra = sorted(n for n in held if not _allowed(component, n))
            if extra:
                found[f"{component} (pid {pid})"] = extra
    assert not found, f"processes holding secrets they do not need: {found}"
    # and each model server holds its own token: the admin API works for the deploy task, not for others
    for model in s.served_models():
        token = s.model_server_token(model).encode()
        assert token in _environ(running[stack.model_server_component(model)])


@pytest.mark.heavy
def test_a_version_goes_from_the_tasks_user_to_the_read_only_model_server(
    running_stack, cfg, feature_root, monkeypatch, use_tracking_uri
):
    """The whole credential path of a deployment: a task registers a trained version and moves
    ``@champion`` with ``airloop_mlflow`` (the writer), the deploy target reloads the model server with the
    token of its connection, and the server loads the version from MLflow as its read-only user."""
    from mlflow import MlflowClient

    from airloop.datasets import load_partitions
    from airloop.training.request import TrainRequest
    from airloop.training.train import train
    from airloop_airflow.hooks.mlflow import mlflow_credentials
    from airloop_airflow.targets import build_target

    s, _ = running_stack
    root, parts = feature_root
    for key, value in {**s.mlflow_connection(), **s.model_server_connections()}.items():
        monkeypatch.setenv(key, value)  # the connections the scheduler's task processes have
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    use_tracking_uri(s.mlflow_url)  # train() pins the tracking URI; the fixture restores the session's
    with mlflow_credentials():
        res = train(
            TrainRequest(
                model=cfg.name, data_root=root.uri, partitions=parts, run_key="auth/1", tracking_uri=s.mlflow_url
            )
        )
        MlflowClient(s.mlflow_url).set_registered_model_alias(cfg.name, "champion", res["version"])
    target = build_target(cfg)
    served = target.serve_aliases()  # POST /admin/reload with the connection's token
    assert served["variants"]["champion"] == str(res["version"]), served
    rows = load_partitions(root, "raw", cfg.name, (parts[-1],)).head(3).reset_index(drop=True)
    records = json.loads(rows.to_json(orient="records", date_format="iso"))
    answer = target.client.invocations({"dataframe_records": records})  # scoring stays open: no token
    assert len(answer["predictions"]) == 3


def test_the_secret_files_are_the_owners_only(running_stack):
    s, _ = running_stack
    state = Path(s.state_dir)
    for f in (
        state / "webhook_secrets.json",
        state / "model_server_tokens.json",
        state / "mlflow_credentials.json",
        s.airflow_passwords_file,
        s.mlflow_auth_ini,
        s.mlflow_auth_db,
    ):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE((state / "mlflow").stat().st_mode) == 0o700


def test_the_stacks_mlflow_needs_a_user_and_the_model_servers_user_only_reads(running_stack, cfg):
    s, _ = running_stack
    import base64

    def post(path: str, body: dict, user: str | None = None) -> int:
        headers = {}
        if user:
            pair = f"{user}:{s.mlflow_credentials()[user]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        r = HttpClient(s.mlflow_url, retries=0).post(path, json_body=body, headers=headers, ok=tuple(range(200, 600)))
        return r.status

    alias = {"name": cfg.name, "alias": "champion", "version": "1"}
    assert post("/api/2.0/mlflow/registered-models/alias", alias) == 401
    assert post("/api/2.0/mlflow/registered-models/alias", alias, mlflow_auth.READER) == 403
    assert post("/api/2.0/mlflow/registered-models/create", {"name": "x-reader"}, mlflow_auth.READER) == 403
    assert HttpClient(s.mlflow_url, retries=0).get("/health").status == 200
    # nothing of this in the environment of the process that runs the tests' own clients
    assert os.environ.get("MLFLOW_TRACKING_PASSWORD") not in s.mlflow_credentials().values()


def test_no_secret_is_written_to_a_log(running_stack):
    """Every file the stack logs to (components and tasks), after the other tests ran through the stack."""
    s, api = running_stack
    api.token()  # a login, as the UI does
    secrets = _secrets(s)
    folders = [s.logs_dir, s.airflow_home / "logs"]
    leaks, files = {}, 0
    for folder in folders:
        for f in folder.rglob("*"):
            if f.is_file():
                files += 1
                text = f.read_bytes()
                hits = sorted(n for n, v in secrets.items() if v.encode() in text)
                if hits:
                    leaks[str(f)] = hits
    assert files >= len(stack.components(s)), files  # every component's log at least
    assert not leaks, f"secrets in logs: {leaks}"
    assert stat.S_IMODE(s.logs_dir.stat().st_mode) == 0o700
    loose = [f.name for f in s.logs_dir.iterdir() if f.is_file() and stat.S_IMODE(f.stat().st_mode) & 0o077]
    assert not loose, f"logs others can read: {loose}"
