"""The local stack: an Airflow home under the state folder, and its processes on a loopback port.

``init`` writes ``airflow.cfg`` (SQLite by default, PostgreSQL when a database URL is given), migrates the
metadata database and applies ``airflow_settings.yaml``. ``start`` runs MLflow, the API server (UI + REST +
execution API), scheduler (LocalExecutor), DAG processor and triggerer, and one model server per valid
pipeline config, as background processes with their logs and pids under the state folder; ``stop`` ends them.

Ports: the API server on ``port``, the log servers on ``port+1`` and ``port+2``, MLflow on ``port+3``, and
the model servers from ``port+4`` on, one per model in name order (``port+4+i`` for the i-th).
"""

from __future__ import annotations

import configparser
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
        (default ``airloop_model_server_<model>``), which the deploy DAG reads."""
        from airloop.config import load_all_pipelines

        ports = self.model_server_ports()
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
            out[key], owner[key] = f"http://127.0.0.1:{ports[cfg.name]}", cfg.name
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

        f = Path(self.state_dir) / "webhook_secrets.json"
        saved: dict[str, str] = json.loads(f.read_text()) if f.is_file() else {}
        ids = sorted({w.connection_id for cfg in load_all_pipelines() for w in cfg.webhooks})
        missing = [i for i in ids if i not in saved]
        if missing:
            import base64

            for conn_id in missing:
                saved[conn_id] = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
            Path(self.state_dir).mkdir(parents=True, exist_ok=True)
            tmp = f.with_suffix(".tmp")
            tmp.write_text(json.dumps(saved, indent=2))
            tmp.chmod(0o600)
            tmp.replace(f)
        return {i: saved[i] for i in ids}

    def save(self) -> None:
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.state_dir) / "stack.json").write_text(json.dumps(asdict(self), indent=2))

    def env(self) -> dict[str, str]:
        """Environment for every Airflow process (and for ``airloop airflow ...``)."""
        env = dict(os.environ)
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
        # each model's deploy DAG finds its model server through an Airflow connection of its own
        env.update(self.model_server_connections())
        # webhook secrets of the local stack, as Airflow connections the webhook routes read
        env.update(self.webhook_connections())
        # Settings from airflow.cfg must win over whatever the calling shell exported.
        for key in [k for k in env if k.startswith("AIRFLOW__")]:
            env.pop(key)
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
        "simple_auth_manager_users": "admin:admin",
        "simple_auth_manager_passwords_file": str(home / "simple_auth_manager_passwords.json.generated"),
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
    }
    cfg["dag_processor"] = {"refresh_interval": "30", "min_file_process_interval": "30"}
    cfg["scheduler"] = {"task_instance_heartbeat_timeout": "120"}
    with path.open("w") as fh:
        fh.write("# Written by `airloop init`; edit via airloop's options, not by hand.\n")
        cfg.write(fh)
    return path


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
        env=s.env(),
        text=True,
        capture_output=True,
        cwd=_repo_root(),
    )
    if proc.returncode != 0:
        raise StackError(f"applying {settings_file} failed:\n{proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip()


def init(s: StackSettings, settings_file: Path | None = None) -> None:
    """Prepare the Airflow home, migrate the database and apply ``airflow_settings.yaml``."""
    s.save()
    write_airflow_cfg(s)
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
    return s.run_dir / f"{component}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


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
    out = {}
    for c in _known_components(s):
        f = _pid_file(s, c)
        if f.is_file():
            pid = int(f.read_text().strip() or 0)
            if pid and _alive(pid):
                out[c] = pid
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
        return [
            _bin("mlflow"),
            "server",
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
    with (logs / f"{component}.log").open("ab") as log:
        proc = subprocess.Popen(
            component_command(s, component),
            env=s.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=_repo_root(),
        )
    _pid_file(s, component).write_text(str(proc.pid))


def start(s: StackSettings, wait_s: float = 120.0) -> list[str]:
    """Start every component not already running, then wait until the API server, scheduler, MLflow and
    every model server that is still running are healthy.

    A model server that exits does not stop the stack (the other models are served): its model is
    returned so the caller can point at its log.

    :returns: the models whose server exited during start
    """
    s.run_dir.mkdir(parents=True, exist_ok=True)
    logs = Path(s.state_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    Path(s.state_dir, "mlflow").mkdir(parents=True, exist_ok=True)
    running = running_components(s)
    wanted = components(s)
    to_start = [c for c in wanted if c not in running]
    _check_ports(s, to_start, running)
    for component in to_start:
        _launch(s, component, logs)
    return _await_healthy(s, wanted, logs, wait_s)


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
    """Stop every running component (SIGTERM to its process group, SIGKILL after ``grace_s``)."""
    running = running_components(s)
    for pid in running.values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in running.values()):
        time.sleep(0.5)
    for pid in running.values():
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for c in _known_components(s):
        _pid_file(s, c).unlink(missing_ok=True)
    return sorted(running)


def admin_password(s: StackSettings) -> str | None:
    """The admin password the simple auth manager generated on first start (None before)."""
    f = s.airflow_home / "simple_auth_manager_passwords.json.generated"
    password = json.loads(f.read_text()).get("admin") if f.is_file() else None
    return str(password) if password else None
