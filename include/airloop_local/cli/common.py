"""What the command groups share: exit codes, the stack a command acts on, model names checked against the
configs, parser types, and the waits on DAG runs."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airloop_local import stack

if TYPE_CHECKING:
    from airloop.config import PipelineConfig
    from airloop_local.airflow_api import AirflowApi

#: exit codes: ok, a domain failure (a run failed, a batch is refused, the stack is down), a usage error
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
#: the first real day the demo (and ``airloop replay``) lands
DEMO_START = dt.date(2013, 1, 1)
#: run states after which a run does not change any more
TERMINAL = {"success", "failed"}


class UsageError(ValueError):
    """The command was called wrongly (an unknown model, a bad value, an unreadable sample): exit code 2."""


def settings(args: argparse.Namespace) -> stack.StackSettings:
    """The local stack a command acts on: ``--state-dir`` (else the default), ``--port``, ``--database-url``."""
    from airloop.storage import state_dir

    return stack.StackSettings.load(
        args.state_dir or state_dir(),
        port=getattr(args, "port", None),
        database_url=getattr(args, "database_url", None),
    )


def use_stack_env(s: stack.StackSettings) -> None:
    """Make domain calls in this process see the same data root as the stack's tasks."""
    os.environ["AIRLOOP_HOME"] = s.state_dir
    os.environ["AIRLOOP_DATA_ROOT"] = s.data_root


def api(s: stack.StackSettings) -> AirflowApi:
    """A client of the running stack's REST API; a StackError that says how to start it otherwise."""
    from airloop_local.airflow_api import AirflowApi

    password = stack.admin_password(s)
    if not password or not stack.health(s):
        start = stack.cli_command(s, "stack", "start")
        raise stack.StackError(f"the local stack is not running at {s.base_url}; start it with `{start}`")
    return AirflowApi(s.base_url, "admin", password)


def known_model(name: str, folder: Path | None = None) -> PipelineConfig:
    """The config of a model named on the command line: a UsageError when no config has that name, a
    ConfigError (a domain failure) when its file is there but broken."""
    from airloop.config import get_pipeline, load_pipelines, pipelines_dir

    configs, errors = load_pipelines(folder)
    if name not in {c.name for c in configs} | {Path(p).stem for p in errors}:
        raise UsageError(
            f"no pipeline config named {name!r} in {folder or pipelines_dir()}; "
            f"known models: {[c.name for c in configs]}"
        )
    return get_pipeline(name, folder)


def known_models(name: str | None) -> list[str]:
    """``[name]`` for a model named on the command line (checked), else every configured model."""
    from airloop.config import load_all_pipelines

    return [known_model(name).name] if name else [c.name for c in load_all_pipelines()]


def iso_date(text: str) -> dt.date:
    """A ``YYYY-MM-DD`` value; a UsageError that names it otherwise."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError as e:
        raise UsageError(f"{text!r} is not a date YYYY-MM-DD ({e})") from None


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, **kw: Any
) -> argparse.ArgumentParser:
    """``sub.add_parser``, with the command's one-line help as the description of its own ``-h`` too."""
    kw.setdefault("description", kw.get("help"))
    return sub.add_parser(name, **kw)


def add_stack_options(parser: argparse.ArgumentParser) -> None:
    """``--port`` and ``--database-url``: which local stack to set up or start."""
    parser.add_argument(
        "--port",
        type=positive_int,
        help="loopback port of the API server and UI (default 8080; port+1 to port+3 are the log servers and "
        "MLflow, port+4 on one model server per model)",
    )
    parser.add_argument(
        "--database-url", help="SQLAlchemy URL of the metadata database (default: SQLite in the state folder)"
    )


def print_login(s: stack.StackSettings) -> None:
    """Where the stack's UIs, model servers, data and logs are (and the files holding the passwords), and how
    to stop this stack."""
    creds = Path(s.state_dir) / "mlflow_credentials.json"
    # passwords are never printed (a terminal may be logged or shared): only the mode-600 files holding them
    print(f"\nAirflow UI:  {s.base_url}   (user: {stack.AIRFLOW_ADMIN}, password in {s.airflow_passwords_file})")
    print(f"MLflow UI:   {s.mlflow_url}   (models, runs, lineage tags; user airloop-admin, password in {creds})")
    for model in s.served_models():
        print(
            f"Model:       {s.model_server_url_for(model)}/invocations   ({model}: MLflow scoring protocol; "
            "/version, /metrics)"
        )
    print(f"Data root:   {s.data_root}")
    print(f"Logs:        {Path(s.state_dir) / 'logs'} (components), {s.airflow_home / 'logs'} (tasks)")
    print(f"Stop with:   {stop_hint(s)}")


def stop_hint(s: stack.StackSettings) -> str:
    """The command that stops this stack (``make stop`` only for the checkout's default stack)."""
    command = stack.cli_command(s, "stack", "stop")
    return "make stop   (or .venv/bin/airloop stack stop)" if command == "airloop stack stop" else command


def warn_exited_servers(s: stack.StackSettings, models: list[str]) -> None:
    for model in models:
        log = Path(s.state_dir) / "logs" / f"{stack.model_server_component(model)}.log"
        print(f"WARNING: the model server of {model} exited; the other models are served. See {log}", file=sys.stderr)


def wait_runs(
    api: Any, dag_id: str, run_ids: set[str] | None, timeout_s: float, expect: int | None = None
) -> dict[str, str]:
    """Poll until the given runs (or ``expect`` runs of the DAG) are finished, printing progress when it
    changes; return run_id -> state."""
    deadline = time.monotonic() + timeout_s
    target = expect if expect is not None else len(run_ids or ())
    last = ""
    while True:
        runs = {r["dag_run_id"]: r["state"] for r in api.dag_runs(dag_id)}
        if run_ids is not None:
            runs = {k: v for k, v in runs.items() if k in run_ids}
        done = {k: v for k, v in runs.items() if v in TERMINAL}
        line = f"  {dag_id}: {len(done)}/{expect or len(run_ids or runs)} runs finished {_state_counts(runs)}"
        if line != last:
            print(line, flush=True)
            last = line
        if len(done) >= target and (run_ids is None or set(done) >= run_ids):
            return runs
        if time.monotonic() > deadline:
            raise stack.StackError(f"runs of {dag_id} did not finish within {timeout_s:.0f} s: {runs}")
        time.sleep(3.0)


def wait_idle(api: Any, dag_ids: list[str], timeout_s: float, settle_s: float = 20.0) -> None:
    """Wait until the DAGs have had no queued or running run for ``settle_s`` seconds; print their runs."""
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        states = {d: {r["dag_run_id"]: r["state"] for r in api.dag_runs(d)} for d in dag_ids}
        if any(st in ("queued", "running") for runs in states.values() for st in runs.values()):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle_s:
            for d, runs in states.items():
                print(f"  {d}: {len(runs)} runs {_state_counts(runs)}", flush=True)
            return
        time.sleep(3.0)
    raise stack.StackError(f"{dag_ids} still busy after {timeout_s:.0f} s")


def _state_counts(runs: dict[str, str]) -> str:
    states = list(runs.values())
    return json.dumps({s: states.count(s) for s in sorted(set(states))})


def replay_model() -> str:
    """The model the demo runs and ``airloop replay`` fills by default: the first config (by name) whose
    ``source.kind`` is ``replay``."""
    from airloop.config import load_pipelines

    names = sorted(c.name for c in load_pipelines()[0] if c.source.kind == "replay")
    if not names:
        raise UsageError("no pipeline config has source.kind: replay, so there is nothing to replay")
    return names[0]
