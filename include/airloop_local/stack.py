"""The local stack: an Airflow home under the state folder, and its processes on a loopback port.

``init`` writes ``airflow.cfg`` (SQLite by default, PostgreSQL when a database URL is given), migrates the
metadata database and applies ``airflow_settings.yaml``. ``start`` runs MLflow, the API server (UI + REST +
execution API), scheduler (LocalExecutor), DAG processor and triggerer, and one model server per valid
pipeline config, as background processes with their logs and pids under the state folder; ``stop`` ends them.

Ports: the API server on ``port``, the log servers on ``port+1`` and ``port+2``, MLflow on ``port+3``, and
the model servers from ``port+4`` on, one per model in name order (``port+4+i`` for the i-th).

Secrets: every secret of the stack is generated once and kept in a mode-600 file of the state folder (the
webhook secrets, one admin token per model server, the MLflow users' passwords, the Airflow admin
password), and each process gets only the ones it needs (:func:`component_env`): a model server its own
token and MLflow's read-only user, MLflow its auth config, the API server the webhook connections, the
processes that run tasks the model server and MLflow connections. The component logs are private (0700).
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from airloop_local import processes

log = logging.getLogger(__name__)

#: the stack's fixed processes; the model servers (one per model) follow them, see :func:`components`
COMPONENTS = ("mlflow", "api-server", "scheduler", "dag-processor", "triggerer")
#: the name of a model server component is ``model-server-<model>``
MODEL_SERVER = "model-server"
DEFAULT_PORT = 8080
#: the first model server's port is ``port + MODEL_SERVER_OFFSET``
MODEL_SERVER_OFFSET = 4
#: SQLite's ``[database] sql_alchemy_connect_args``: wait up to 30 s for a lock
#: (a busy writer must not end the scheduler)
SQLITE_CONNECT_ARGS = {"timeout": 30}
#: the Airflow connection that holds the MLflow address and the tasks' credentials (``MlflowHook``)
MLFLOW_CONN_ID = "airloop_mlflow"
#: the Airflow UI's user (the simple auth manager's only one)
AIRFLOW_ADMIN = "admin"
#: variables that carry a credential: no component inherits them from the calling shell;
#: :func:`component_env` adds exactly the ones a component needs
SECRET_ENV = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_AUTH_CONFIG_PATH",
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "AIRLOOP_MODEL_SERVER_TOKEN",
)
#: the components that run task code (the scheduler's LocalExecutor workers), triggers or callbacks: they
#: get the shell's own ``AIRFLOW_CONN_*`` (alert channels, a Kubernetes cluster), no other component does
TASK_RUNNERS = ("scheduler", "triggerer", "dag-processor")


class StackError(RuntimeError):
    """The local stack could not be set up, started or reached; the message says what to do."""


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_state_dir() -> Path:
    """The state folder ``make`` and a bare ``airloop`` use in this checkout (``AIRLOOP_HOME`` aside)."""
    from airloop.storage import checkout_state_dir

    return checkout_state_dir().resolve()


def cli_command(s: StackSettings, *words: str) -> str:
    """The ``airloop`` command line that acts on this stack (with ``--state-dir`` unless it is the default)."""
    if Path(s.state_dir).resolve() == default_state_dir():
        return " ".join(["airloop", *words])
    return " ".join(["airloop", "--state-dir", shlex.quote(s.state_dir), *words])


@dataclass
class StackSettings:
    """Where the local stack lives and how it is reached; persisted in ``<state>/stack.json``."""

    state_dir: str
    port: int = DEFAULT_PORT
    database_url: str = ""
    mlflow_database_url: str = ""
    parallelism: int = 4

    @property
    def airflow_home(self) -> Path:
        return Path(self.state_dir) / "airflow"

    @property
    def data_root(self) -> str:
        from airloop.storage import default_data_root_uri

        return default_data_root_uri(self.state_dir)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.airflow_home / 'airflow.db'}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mlflow_port(self) -> int:
        return self.port + 3

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def served_models(self) -> list[str]:
        """The models the stack serves: every valid pipeline config, by name (a broken YAML is left out)."""
        from airloop.config import load_all_pipelines

        return sorted(cfg.name for cfg in load_all_pipelines())

    def model_server_ports(self) -> dict[str, int]:
        """Each served model's port: ``port + 4 + i`` for the i-th model by name."""
        return {m: self.port + MODEL_SERVER_OFFSET + i for i, m in enumerate(self.served_models())}

    def model_server_url_for(self, model: str) -> str:
        """The address of one model's server in the local stack."""
        ports = self.model_server_ports()
        if model not in ports:
            from airloop.config import pipelines_dir

            raise StackError(
                f"the local stack serves no model {model!r} (it serves {sorted(ports) or 'none'}): a model is "
                f"served when its pipeline config in {pipelines_dir()} loads; see `airloop model check {model}`"
            )
        return f"http://127.0.0.1:{ports[model]}"

    def model_server_connections(self) -> dict[str, str]:
        """``AIRFLOW_CONN_<ID>`` values: each model's server under its ``cfg.model_server_conn_id``
        (default ``airloop_model_server_<model>``), which the deploy DAG reads; the password is the server's
        admin token (:meth:`model_server_token`)."""
        from airloop.config import load_all_pipelines

        ports, tokens = self.model_server_ports(), self.model_server_tokens()
        out: dict[str, str] = {}
        owner: dict[str, str] = {}
        for cfg in sorted(load_all_pipelines(), key=lambda c: c.name):
            key = f"AIRFLOW_CONN_{cfg.model_server_conn_id.upper()}"
            if key in out:
                raise StackError(
                    f"{owner[key]} and {cfg.name} both name the model server connection "
                    f"{cfg.model_server_conn_id!r}; give each model its own deployment.model_server_conn_id "
                    "(or leave it unset for airloop_model_server_<model>)"
                )
            conn = {
                "conn_type": "http",
                "schema": "http",
                "host": "127.0.0.1",
                "port": ports[cfg.name],
                "password": tokens[cfg.name],
            }
            out[key], owner[key] = json.dumps(conn), cfg.name
        return out

    @property
    def mlflow_db_url(self) -> str:
        """MLflow's backend store: its own database (its Alembic tables would clash with Airflow's)."""
        return self.mlflow_database_url or f"sqlite:///{Path(self.state_dir) / 'mlflow' / 'mlflow.db'}"

    @property
    def run_dir(self) -> Path:
        return Path(self.state_dir) / "run"

    @classmethod
    def load(cls, state_dir: str | Path, *, port: int | None = None, database_url: str | None = None) -> StackSettings:
        """Settings from flags, then environment (``AIRLOOP_PORT``, ``AIRLOOP_DATABASE_URL``), then the
        saved ``stack.json``, then defaults."""
        state = Path(state_dir).resolve()
        saved: dict[str, Any] = {}
        f = state / "stack.json"
        if f.is_file():
            saved = json.loads(f.read_text())
        env_port = os.environ.get("AIRLOOP_PORT")
        return cls(
            state_dir=str(state),
            port=int(port or env_port or saved.get("port") or DEFAULT_PORT),
            database_url=database_url
            if database_url is not None
            else os.environ.get("AIRLOOP_DATABASE_URL", saved.get("database_url", "")),
            mlflow_database_url=os.environ.get("AIRLOOP_MLFLOW_DATABASE_URL", saved.get("mlflow_database_url", "")),
            parallelism=int(saved.get("parallelism", 4)),
        )

    def webhook_secret(self, connection_id: str) -> str:
        """The local stack's secret of one webhook connection (what a sender signs with)."""
        return self._webhook_secrets()[connection_id]

    def webhook_connections(self) -> dict[str, str]:
        """``AIRFLOW_CONN_<ID>`` values for every configured webhook source of the local stack.

        Each source gets a random ``whsec_`` secret, generated once and kept in ``<state>/webhook_secrets.json``
        (mode 600). In production these connections come from a secrets backend instead.
        """
        return {
            f"AIRFLOW_CONN_{i.upper()}": json.dumps({"conn_type": "generic", "password": secret})
            for i, secret in self._webhook_secrets().items()
        }

    def _webhook_secrets(self) -> dict[str, str]:
        from airloop.config import load_all_pipelines

        ids = sorted({w.connection_id for cfg in load_all_pipelines() for w in cfg.webhooks})
        return self._generated("webhook_secrets.json", ids, lambda: "whsec_" + _b64(secrets.token_bytes(24)))

    def model_server_tokens(self) -> dict[str, str]:
        """Each served model's admin token (``Authorization: Bearer``), generated once and kept in
        ``<state>/model_server_tokens.json`` (mode 600); the model's server connection carries it as password."""
        return self._generated("model_server_tokens.json", self.served_models(), _token)

    def model_server_token(self, model: str) -> str:
        """One model's admin token (:meth:`model_server_tokens`)."""
        return self.model_server_tokens()[model]

    def mlflow_credentials(self) -> dict[str, str]:
        """The local MLflow's user passwords (``airloop-admin``, ``airloop-writer``, ``airloop-reader``) and
        its CSRF key, generated once and kept in ``<state>/mlflow_credentials.json`` (mode 600)."""
        from airloop_local import mlflow_auth

        ids = [mlflow_auth.ADMIN, mlflow_auth.WRITER, mlflow_auth.READER, "flask_secret_key"]
        return self._generated("mlflow_credentials.json", ids, _token)

    def mlflow_env(self, user: str) -> dict[str, str]:
        """``MLFLOW_TRACKING_URI`` / ``_USERNAME`` / ``_PASSWORD`` of one of the local MLflow's users."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_credentials()[user],
        }

    def mlflow_connection(self) -> dict[str, str]:
        """``AIRFLOW_CONN_AIRLOOP_MLFLOW``: the MLflow server and the tasks' user (``MlflowHook`` reads it)."""
        from airloop_local import mlflow_auth

        conn = {
            "conn_type": "http",
            "schema": "http",
            "host": "127.0.0.1",
            "port": self.mlflow_port,
            "login": mlflow_auth.WRITER,
            "password": self.mlflow_credentials()[mlflow_auth.WRITER],
        }
        return {f"AIRFLOW_CONN_{MLFLOW_CONN_ID.upper()}": json.dumps(conn)}

    @property
    def mlflow_auth_ini(self) -> Path:
        """MLflow's basic-auth config (``MLFLOW_AUTH_CONFIG_PATH``); its users live in ``mlflow/auth.db``."""
        return Path(self.state_dir) / "mlflow" / "basic_auth.ini"

    @property
    def mlflow_auth_db(self) -> Path:
        return Path(self.state_dir) / "mlflow" / "auth.db"

    @property
    def airflow_passwords_file(self) -> Path:
        """The Airflow UI password of user ``admin`` (mode 600); the one place the README points at."""
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"

    @property
    def logs_dir(self) -> Path:
        """The components' logs (mode 700: a log may name paths and users, never a secret, but is nobody
        else's business either)."""
        return Path(self.state_dir) / "logs"

    def _generated(self, name: str, ids: list[str], make: Any) -> dict[str, str]:
        """``{id: secret}`` for ``ids`` from ``<state>/<name>`` (mode 600), generating the missing ones
        with ``make()`` once; an id no longer asked for stays in the file (a model may come back)."""
        f = Path(self.state_dir) / name
        saved: dict[str, str] = json.loads(f.read_text()) if f.is_file() else {}
        missing = [i for i in ids if i not in saved]
        if missing:
            for i in missing:
                saved[i] = make()
            _write_private(f, json.dumps(saved, indent=2))
        return {i: saved[i] for i in ids}

    def save(self) -> None:
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.state_dir) / "stack.json").write_text(json.dumps(asdict(self), indent=2))

    def env(self) -> dict[str, str]:
        """Environment of the processes that run tasks, and of ``airloop airflow ...`` (which may run one:
        ``tasks test``): the scheduler's, see :func:`component_env`."""
        return component_env(self, "scheduler")

    def base_env(self) -> dict[str, str]:
        """What every component shares: this stack's home, data root and MLflow address, and the calling
        shell's environment without Airflow settings, connections or any credential (:data:`SECRET_ENV`)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_")) and k not in SECRET_ENV
        }
        env.update(
            AIRFLOW_HOME=str(self.airflow_home),
            AIRLOOP_HOME=self.state_dir,
            AIRLOOP_DATA_ROOT=self.data_root,
            SPARK_LOCAL_IP="127.0.0.1",
            GX_ANALYTICS_ENABLED="False",
            MLFLOW_TRACKING_URI=self.mlflow_url,
            # spark-submit and python -m ... must resolve to this environment in task processes
            PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
            NO_PROXY="127.0.0.1,localhost",
        )
        return env


def write_airflow_cfg(s: StackSettings) -> Path:
    """Write ``airflow.cfg`` for this stack, keeping generated secrets across rewrites."""
    home = s.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    path = home / "airflow.cfg"
    old = configparser.ConfigParser(interpolation=None)
    if path.is_file():
        old.read(path)

    def keep(section: str, key: str, make: Any) -> str:
        return old.get(section, key, fallback="") or make()

    repo = _repo_root()
    cfg = configparser.ConfigParser(interpolation=None)
    cfg["core"] = {
        "dags_folder": str(repo / "dags"),
        "plugins_folder": str(repo / "plugins"),
        "executor": "LocalExecutor",
        "parallelism": str(s.parallelism),
        "max_active_tasks_per_dag": str(s.parallelism),
        "load_examples": "False",
        "dags_are_paused_at_creation": "True",
        "fernet_key": keep("core", "fernet_key", _fernet_key),
        "simple_auth_manager_users": f"{AIRFLOW_ADMIN}:admin",
        # written by prepare_secrets before any start: Airflow prints a password it generates into the log
        "simple_auth_manager_passwords_file": str(s.airflow_passwords_file),
    }
    cfg["database"] = {"sql_alchemy_conn": s.db_url}
    if s.db_url.startswith("sqlite"):
        cfg["database"]["sql_alchemy_connect_args"] = "airloop_local.stack.SQLITE_CONNECT_ARGS"
    cfg["api"] = {
        "host": "127.0.0.1",
        "port": str(s.port),
        # Workers reach the execution API at base_url + /execution/: it must follow the port.
        "base_url": s.base_url,
        "workers": "1",
    }
    cfg["api_auth"] = {"jwt_secret": keep("api_auth", "jwt_secret", lambda: secrets.token_urlsafe(32))}
    cfg["logging"] = {
        "base_log_folder": str(home / "logs"),
        "worker_log_server_port": str(s.port + 1),
        "trigger_log_server_port": str(s.port + 2),
        # task logs are the owner's only, as the component logs are
        "file_task_handler_new_folder_permissions": "0o700",
        "file_task_handler_new_file_permissions": "0o600",
    }
    cfg["dag_processor"] = {"refresh_interval": "30", "min_file_process_interval": "30"}
    cfg["scheduler"] = {"task_instance_heartbeat_timeout": "120"}
    with path.open("w") as fh:
        fh.write("# Written by `airloop init`; edit via airloop's options, not by hand.\n")
        cfg.write(fh)
    return path


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()


def _token() -> str:
    """A fresh random secret (32 bytes, URL-safe text)."""
    return secrets.token_urlsafe(32)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner only (mode 600 from the first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)


def _private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter (mode 700), created when missing."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def prepare_secrets(s: StackSettings, check_mlflow_users: bool = True) -> None:
    """Generate what the stack's processes authenticate with, before any of them starts: the Airflow admin
    password, MLflow's auth config and users, the model servers' tokens and the webhook secrets; make the
    state folder's secret files, the MLflow folder and the logs private. Idempotent: what exists is kept.

    :param check_mlflow_users: make sure every MLflow user and role exists (a process of about 4 s); else
        only when MLflow's auth database is missing
    """
    _private_dir(s.logs_dir)
    for f in s.logs_dir.iterdir():
        if f.is_file():
            f.chmod(0o600)
    _airflow_password(s)
    s.model_server_tokens()
    s.webhook_connections()
    s.mlflow_credentials()
    _mlflow_auth(s, create_users=check_mlflow_users)


def _airflow_password(s: StackSettings) -> None:
    """The simple auth manager's passwords file, written by us (mode 600) so that Airflow, finding the user
    there, never generates a password and prints it into the API server's log."""
    f = s.airflow_passwords_file
    saved: dict[str, str] = json.loads(f.read_text() or "{}") if f.is_file() else {}
    if AIRFLOW_ADMIN not in saved:
        saved[AIRFLOW_ADMIN] = _token()
        _write_private(f, json.dumps(saved) + "\n")
    f.chmod(0o600)


def _mlflow_auth(s: StackSettings, create_users: bool) -> None:
    """MLflow's basic-auth ini, and its users in the auth database: created when ``create_users`` or when
    the database is not there yet (a process of its own, about 4 s; see :mod:`airloop_local.mlflow_auth`)."""
    from airloop_local import mlflow_auth

    folder = _private_dir(Path(s.state_dir) / "mlflow")
    mlflow_auth.write_ini(s.mlflow_auth_ini, f"sqlite:///{s.mlflow_auth_db}")
    creds = s.mlflow_credentials()
    if not (create_users or not s.mlflow_auth_db.is_file()):
        return
    proc = subprocess.run(
        [sys.executable, "-m", "airloop_local.mlflow_auth", str(Path(s.state_dir) / "mlflow_credentials.json")],
        env={**s.base_env(), "MLFLOW_AUTH_CONFIG_PATH": str(s.mlflow_auth_ini)},
        text=True,
        capture_output=True,
        cwd=_repo_root(),
    )
    output = proc.stdout + proc.stderr
    for secret in creds.values():  # an error message must not carry a password
        output = output.replace(secret, "***")
    if proc.returncode != 0:
        raise StackError(f"creating the MLflow users in {s.mlflow_auth_db} failed:\n{output.strip()[-2000:]}")
    s.mlflow_auth_db.chmod(0o600)
    folder.chmod(0o700)


def component_env(s: StackSettings, component: str) -> dict[str, str]:
    """The environment of one component: :meth:`StackSettings.base_env` plus only the secrets it needs.

    ============================  ==========================================================================
    ``mlflow``                    its auth config (``MLFLOW_AUTH_CONFIG_PATH``) and CSRF key
    ``model-server-<model>``      its own admin token, MLflow's read-only user
    ``api-server``                the webhook connections (its routes check the signatures)
    ``scheduler`` (runs tasks)    the model server connections (with their tokens), ``airloop_mlflow`` (the
                                  writer), and the shell's own connections (alert channels, a cluster)
    ``triggerer``                 the model server connections (the canary trigger reads and moves
                                  weights), the shell's own connections
    ``dag-processor``             the shell's own connections (failure callbacks of lost tasks: alerts)
    ============================  ==========================================================================
    """
    from airloop_local import mlflow_auth

    # the component's log is its owner's only (the launch opens it before asking for this environment)
    log = _private_dir(s.logs_dir) / f"{component}.log"
    if log.is_file():
        log.chmod(0o600)
    env = s.base_env()
    if component in TASK_RUNNERS:
        env.update({k: v for k, v in os.environ.items() if k.startswith("AIRFLOW_CONN_")})
    if component == "mlflow":
        _mlflow_auth(s, create_users=False)
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(s.mlflow_auth_ini)
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = s.mlflow_credentials()["flask_secret_key"]
    elif component.startswith(MODEL_SERVER + "-"):
        model = component.removeprefix(MODEL_SERVER + "-")
        env["AIRLOOP_MODEL_SERVER_TOKEN"] = s.model_server_token(model)
        env.update(s.mlflow_env(mlflow_auth.READER))
    elif component == "api-server":
        _airflow_password(s)
        env.update(s.webhook_connections())
    elif component in ("scheduler", "triggerer"):
        env.update(s.model_server_connections())
        if component == "scheduler":
            env.update(s.mlflow_connection())
    elif component != "dag-processor":
        raise StackError(f"unknown stack component {component!r}; known: {components(s)}")
    return env


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def run_airflow(
    s: StackSettings, *args: str, check: bool = True, capture: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run an ``airflow`` CLI command against this stack's home."""
    return subprocess.run(
        [_bin("airflow"), *args],
        env=s.env(),
        check=check,
        text=True,
        capture_output=capture,
        cwd=_repo_root(),
    )


def apply_settings(s: StackSettings, settings_file: Path | None = None) -> str:
    """Apply ``airflow_settings.yaml`` to this stack's metadata database (in a process of its own, so the
    stack's ``AIRFLOW_HOME`` is the one Airflow configures itself from); return what was applied."""
    settings_file = settings_file or _repo_root() / "airflow_settings.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "airloop_local.settings", str(settings_file)],
        env=s.base_env(),
        text=True,
        capture_output=True,
        cwd=_repo_root(),
    )
    if proc.returncode != 0:
        raise StackError(f"applying {settings_file} failed:\n{proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip()


def init(s: StackSettings, settings_file: Path | None = None) -> None:
    """Prepare the Airflow home and the stack's secrets, migrate the database, apply ``airflow_settings.yaml``."""
    s.save()
    write_airflow_cfg(s)
    prepare_secrets(s)
    if "://" not in s.data_root:
        Path(s.data_root).mkdir(parents=True, exist_ok=True)
    proc = run_airflow(s, "db", "migrate", check=False, capture=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise StackError(f"`airflow db migrate` failed on {_safe_url(s.db_url)}:\n{tail}")
    apply_settings(s, settings_file)


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def _pid_file(s: StackSettings, component: str) -> Path:
    """The component's pid file: the :class:`~airloop_local.processes.Record` of the session it leads."""
    return s.run_dir / f"{component}.pid"


def _record(s: StackSettings, component: str) -> processes.Record | None:
    """What the component's pid file records (None without one, or with a damaged one)."""
    try:
        return processes.Record.parse(_pid_file(s, component).read_text())
    except OSError:
        return None


@dataclass(frozen=True)
class ComponentState:
    """What ``stack status`` says of one component."""

    #: running (its leader lives), crashed (its leader died and its pid file is left), stopped
    state: str
    pid: int | None = None
    #: crashed: the processes of its tree still alive (they may hold its ports)
    orphans: int = 0

    def __str__(self) -> str:
        if self.state == "running":
            return f"running (pid {self.pid})"
        if self.state == "crashed":
            return f"crashed ({self.orphans} orphaned process{'' if self.orphans == 1 else 'es'})"
        return self.state


STOPPED = ComponentState("stopped")


def model_server_component(model: str) -> str:
    """The component name of one model's server (its log and pid file are named after it)."""
    return f"{MODEL_SERVER}-{model}"


def components(s: StackSettings) -> list[str]:
    """Every component of this stack: the fixed ones, then one model server per served model."""
    return [*COMPONENTS, *(model_server_component(m) for m in s.served_models())]


def _known_components(s: StackSettings) -> list[str]:
    """:func:`components` plus model servers that still have a pid file (of a model since removed)."""
    names = components(s)
    if s.run_dir.is_dir():
        names += sorted(p.stem for p in s.run_dir.glob(f"{MODEL_SERVER}-*.pid") if p.stem not in names)
    return names


def running_components(s: StackSettings) -> dict[str, int]:
    """component -> pid of its leader, for each component whose leader runs (the pid file's process, by its
    start time: a pid reused by another program is not the component)."""
    out = {}
    for c in _known_components(s):
        record = _record(s, c)
        if record is not None and processes.leader_alive(record):
            out[c] = record.pid
    return out


def component_states(s: StackSettings) -> dict[str, ComponentState]:
    """Each known component's state; a crashed one with the number of its processes still alive."""
    table = processes.process_table()
    out = {}
    for c in _known_components(s):
        record = _record(s, c)
        if record is None:
            out[c] = STOPPED
        elif record.is_leader(table.get(record.pid)):
            out[c] = ComponentState("running", record.pid)
        else:
            out[c] = ComponentState("crashed", record.pid, len(processes.members(record, table)))
    return out


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def health(s: StackSettings, timeout: float = 3.0) -> dict[str, Any] | None:
    """The API server's health report, or None when it does not answer (one attempt: callers poll)."""
    from airloop.http import HttpClient, HttpError

    try:
        report = HttpClient(s.base_url, timeout=timeout, retries=0).get("/api/v2/monitor/health").json()
    except (HttpError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _http_ok(url: str, timeout: float = 3.0) -> bool:
    """Whether ``url`` answers 200 (one attempt: callers poll)."""
    from airloop.http import HttpClient, HttpError

    try:
        return HttpClient(url, timeout=timeout, retries=0).get().status == 200
    except HttpError:
        return False


def component_command(s: StackSettings, component: str) -> list[str]:
    """The command line that runs one component of this stack."""
    if component.startswith(MODEL_SERVER + "-"):
        model = component.removeprefix(MODEL_SERVER + "-")
        s.model_server_url_for(model)  # a clear error for a model the stack does not serve
        port = str(s.model_server_ports()[model])
        # --allow-empty: without a champion the server answers 503 until POST /admin/reload loads one
        return [
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
    if component == "mlflow":
        # basic-auth: every request but /health needs a user (see airloop_local.mlflow_auth); workspaces on, or
        # any user could create experiments and models
        return [
            _bin("mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--enable-workspaces",
            "--backend-store-uri",
            s.mlflow_db_url,
            "--artifacts-destination",
            f"{s.data_root}/mlflow-artifacts",
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(s.mlflow_port),
            "--workers",
            "1",
        ]
    if component == "api-server":
        return [_bin("airflow"), component, "--host", "127.0.0.1", "--port", str(s.port)]
    if component in COMPONENTS:
        return [_bin("airflow"), component]
    raise StackError(f"unknown stack component {component!r}; known: {components(s)}")


def _ports_needed(s: StackSettings, to_start: list[str], running: dict[str, int]) -> list[tuple[int, str]]:
    """(port, component) for every port the components about to start will listen on."""
    needed = []
    if "api-server" not in running:  # the log servers come and go with the scheduler and triggerer
        needed += [
            (s.port, "api-server"),
            (s.port + 1, "the worker log server"),
            (s.port + 2, "the trigger log server"),
        ]
    ports = s.model_server_ports()
    for c in to_start:
        if c == "mlflow":
            needed.append((s.mlflow_port, c))
        elif c.startswith(MODEL_SERVER + "-"):
            needed.append((ports[c.removeprefix(MODEL_SERVER + "-")], c))
    return needed


def _check_ports(s: StackSettings, to_start: list[str], running: dict[str, int]) -> None:
    for port, component in _ports_needed(s, to_start, running):
        if not _port_free(port):
            last = s.port + MODEL_SERVER_OFFSET + max(len(s.served_models()) - 1, 0)
            raise StackError(
                f"port {port} on 127.0.0.1 is taken by another program (needed by {component}); start on another "
                f"port with `{cli_command(s, 'stack', 'start', '--port', 'N')}` (uses N to N+{last - s.port}); if "
                "this stack is already running with another set of models, restart it "
                f"(`{cli_command(s, 'stack', 'stop')}`, then start)"
            )


def _launch(s: StackSettings, component: str, logs: Path) -> None:
    """Start one component as the leader of a new session, and record that session in its pid file."""
    with (logs / f"{component}.log").open("ab") as log:
        proc = subprocess.Popen(
            component_command(s, component),
            env=component_env(s, component),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=_repo_root(),
        )
    f = _pid_file(s, component)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(processes.Record.of(proc.pid).dumps())
    tmp.replace(f)


def start(s: StackSettings, wait_s: float = 120.0) -> list[str]:
    """Start every component not already running, then wait until the API server, scheduler, MLflow and
    every model server that is still running are healthy.

    A component whose leader died (a crash) is first ended for good: what is left of its process tree
    (a scheduler's log server on its port, its executor workers and their tasks) is terminated, so that the
    new one gets its ports and no task runs twice. A crashed scheduler is started again only once Airflow
    counts the old one dead (:func:`_await_scheduler_given_up`), so that the new one resets at once the
    task instances the old one had queued or running.

    A model server that exits does not stop the stack (the other models are served): its model is
    returned so the caller can point at its log.

    :returns: the models whose server exited during start
    """
    s.run_dir.mkdir(parents=True, exist_ok=True)
    logs = Path(s.state_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    Path(s.state_dir, "mlflow").mkdir(parents=True, exist_ok=True)
    crashed = reap_crashed(s)
    running = running_components(s)
    wanted = components(s)
    to_start = [c for c in wanted if c not in running]
    _check_ports(s, to_start, running)
    later = [c for c in to_start if c == "scheduler" and c in crashed]
    for component in to_start:
        if component not in later:
            _launch(s, component, logs)
    if later:
        _await_scheduler_given_up(s)
        _launch(s, "scheduler", logs)
    return _await_healthy(s, wanted, logs, wait_s)


#: seconds the processes a crashed component left get to end on SIGTERM: no leader shuts them down in order
#: (the scheduler's idle executor workers ignore SIGTERM, as their leader's handler tells them to), so a long
#: wait only delays the SIGKILL
ORPHAN_GRACE_S = 5.0


def reap_crashed(s: StackSettings, grace_s: float = ORPHAN_GRACE_S) -> dict[str, int]:
    """End what is left of every component whose leader died, and forget it; return component -> the number
    of its processes that were ended.

    :raises StackError: a port the crashed components' processes listened on is still taken afterwards
    """
    table = processes.process_table()
    records = {c: r for c in _known_components(s) if (r := _record(s, c)) is not None}
    crashed = {c: r for c, r in records.items() if not r.is_leader(table.get(r.pid))}
    trees = {c: processes.members(r, table) for c, r in crashed.items()}
    left = set().union(*trees.values())
    ports = processes.listening_ports(left)
    processes.terminate(dict.fromkeys(left, grace_s), table)
    for c, tree in trees.items():
        if tree:
            log.warning("%s had crashed: ended the %d processes it left", c, len(tree))
    taken = processes.port_holders(ports)
    if taken:
        raise StackError(
            f"port(s) {sorted(taken)} of crashed components are still taken (by pid(s) "
            f"{sorted(set(taken.values()))}); end those processes, then `{cli_command(s, 'stack', 'start')}`"
        )
    for c in crashed:
        _pid_file(s, c).unlink(missing_ok=True)
    return {c: len(tree) for c, tree in trees.items()}


def _await_scheduler_given_up(s: StackSettings) -> None:
    """Wait until Airflow counts a crashed scheduler dead: its last heartbeat older than ``[scheduler]
    scheduler_health_check_threshold``, as the API server's health report says.

    A scheduler resets the task instances that a dead scheduler had queued or running when it starts, but
    only those of a scheduler already past that threshold; one started sooner leaves them to its periodic
    check (``orphaned_tasks_check_interval``, 5 minutes) and the tasks' heartbeat timeout. The wait is
    bounded: without an answer from the API server, the scheduler is started anyway."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(s.airflow_home / "airflow.cfg")
    threshold = cfg.getint("scheduler", "scheduler_health_check_threshold", fallback=30)
    deadline = time.monotonic() + threshold + 60.0
    while time.monotonic() < deadline:
        h = health(s)
        if h is not None and h.get("scheduler", {}).get("status") != "healthy":
            return
        time.sleep(1.0)


def _await_healthy(s: StackSettings, wanted: list[str], logs: Path, wait_s: float) -> list[str]:
    servers = {c: c.removeprefix(MODEL_SERVER + "-") for c in wanted if c.startswith(MODEL_SERVER + "-")}
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        alive = running_components(s)
        dead = [c for c in wanted if c not in alive and c not in servers]
        if dead:
            raise StackError(f"{', '.join(dead)} exited during start; see {logs}/<component>.log")
        h = health(s)
        core_ok = (
            h
            and h.get("scheduler", {}).get("status") == "healthy"
            and h.get("metadatabase", {}).get("status") == "healthy"
            and _http_ok(f"{s.mlflow_url}/health")
        )
        if core_ok and all(c not in alive or _http_ok(f"{s.model_server_url_for(m)}/ping") for c, m in servers.items()):
            return [m for c, m in servers.items() if c not in alive]
        time.sleep(1.0)
    raise StackError(f"the stack did not become healthy within {wait_s:.0f} s; see {logs}/")


def stop(s: StackSettings, grace_s: float = 30.0) -> list[str]:
    """Stop every component, running or crashed: its whole process tree, the processes that listen on the
    stack's ports among them (SIGTERM, then SIGKILL after ``grace_s``, or :data:`ORPHAN_GRACE_S` for what a
    crashed component left); return the components that had processes.

    The tree of a component is its session, which also holds what its leader forked before it died; see
    :mod:`airloop_local.processes` for how a stranger that reused a pid is told apart."""
    table = processes.process_table()
    records = {c: r for c in _known_components(s) if (r := _record(s, c)) is not None}
    running = {c for c, r in records.items() if r.is_leader(table.get(r.pid))}
    trees = {c: processes.members(r, table) for c, r in records.items()}
    graces = {}
    for c, tree in trees.items():  # a running leader shuts its children down in order; orphans have none
        graces.update(dict.fromkeys(tree, grace_s if c in running else min(grace_s, ORPHAN_GRACE_S)))
    processes.terminate(graces, table)
    for _ in range(3):  # anything forked while the trees were ending
        table = processes.process_table()
        left = set().union(*(processes.members(r, table) for r in records.values()))
        if not left:
            break
        processes.terminate(dict.fromkeys(left, 0.0), table)
    # a process on a port of the stack now is not of a recorded session: not ours to end, but worth saying
    for port, pid in sorted(processes.port_holders(_stack_ports(s)).items()):
        log.warning("port %d of the stack is still taken by pid %d, which is not a process of this stack", port, pid)
    for c in _known_components(s):
        _pid_file(s, c).unlink(missing_ok=True)
    return sorted(c for c, tree in trees.items() if tree)


def _stack_ports(s: StackSettings) -> list[int]:
    """Every port the stack's components listen on."""
    return [s.port, s.port + 1, s.port + 2, s.mlflow_port, *s.model_server_ports().values()]


def admin_password(s: StackSettings) -> str | None:
    """The Airflow admin password (None before ``init``); printed nowhere, kept in
    :attr:`StackSettings.airflow_passwords_file`."""
    f = s.airflow_passwords_file
    password = json.loads(f.read_text() or "{}").get(AIRFLOW_ADMIN) if f.is_file() else None
    return str(password) if password else None
