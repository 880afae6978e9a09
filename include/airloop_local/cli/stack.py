"""``airloop init | settings apply | stack start|stop|status | airflow ... | env``: the local stack itself."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from airloop_local import stack
from airloop_local.cli import common

#: the airflow command has no options of its own: every word after it, ``-h`` included, goes to Airflow
_NO_OPTIONS = "\0"


def cmd_init(args: argparse.Namespace) -> int:
    s = common.settings(args)
    t = time.monotonic()
    stack.init(s)
    print(f"Airflow home ready at {s.airflow_home} on {stack._safe_url(s.db_url)} ({time.monotonic() - t:.1f} s)")
    return common.EXIT_OK


def cmd_settings_apply(args: argparse.Namespace) -> int:
    s = common.settings(args)
    if not args.file.is_file():
        raise common.UsageError(f"settings file {args.file} not found")
    stack.write_airflow_cfg(s)
    print(f"applied {args.file}: {stack.apply_settings(s, args.file)}")
    return common.EXIT_OK


def cmd_stack(args: argparse.Namespace) -> int:
    s = common.settings(args)
    if args.action == "start":
        return start_stack(s)
    if args.action == "stop":
        stopped = stack.stop(s)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return common.EXIT_OK
    return print_stack_status(s)


def start_stack(s: stack.StackSettings) -> int:
    """Prepare the Airflow home on first use (else rewrite its config and make sure its secrets exist), start
    every component, say where everything is (the password files, never a password)."""
    if not (s.airflow_home / "airflow.cfg").is_file():
        stack.init(s)
    else:
        s.save()
        stack.write_airflow_cfg(s)
        stack.prepare_secrets(s, check_mlflow_users=False)
    t = time.monotonic()
    exited = stack.start(s)
    print(f"Local stack healthy in {time.monotonic() - t:.1f} s")
    common.warn_exited_servers(s, exited)
    common.print_login(s)
    return common.EXIT_OK


def print_stack_status(s: stack.StackSettings) -> int:
    """One line per component (each model's server with its address and connection); 0 when healthy."""
    from airloop.config import load_all_pipelines, load_pipelines

    running = stack.running_components(s)
    states = stack.component_states(s)  # running (pid), crashed (N orphaned processes) or stopped
    h = stack.health(s)
    known = stack.components(s)
    width = max(len(c) for c in [*known, *running])
    for c in stack.COMPONENTS:
        print(f"{c:{width}s}  {states.get(c, stack.STOPPED)}")
    for cfg in sorted(load_all_pipelines(), key=lambda c: c.name):
        c = stack.model_server_component(cfg.name)
        state = states.get(c, stack.STOPPED)
        print(f"{c:{width}s}  {state}  {s.model_server_url_for(cfg.name)}  (connection {cfg.model_server_conn_id})")
    for c in sorted(set(running) - set(known)):
        print(f"{c:{width}s}  running (pid {running[c]}), but its model has no valid config now; restart the stack")
    for path, error in load_pipelines()[1].items():
        print(f"not served: {path}: {error.splitlines()[0]}")
    print(f"health: {json.dumps(h) if h else 'API server not reachable at ' + s.base_url}")
    if running:
        common.print_login(s)
    return common.EXIT_OK if h else common.EXIT_FAILURE


def cmd_airflow(args: argparse.Namespace) -> int:
    s = common.settings(args)
    return stack.run_airflow(s, *args.args, check=False).returncode


def cmd_env(args: argparse.Namespace) -> int:
    env = common.settings(args).env()
    for k in ("AIRFLOW_HOME", "AIRLOOP_HOME", "AIRLOOP_DATA_ROOT"):
        print(f"export {k}={env[k]}")
    return common.EXIT_OK


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``init``, ``settings``, ``stack``, ``airflow`` and ``env``."""
    sp = common.add_command(sub, "init", help="prepare the Airflow home, its database and settings")
    common.add_stack_options(sp)
    sp.set_defaults(func=cmd_init)

    sp = common.add_command(sub, "settings", help="apply airflow_settings.yaml (connections, pools, ...)")
    sp.add_argument("action", choices=["apply"], help="apply: create or update every entry of the file")
    sp.add_argument(
        "--file",
        type=Path,
        default=stack._repo_root() / "airflow_settings.yaml",
        help="the settings file (default: the checkout's airflow_settings.yaml)",
    )
    sp.set_defaults(func=cmd_settings_apply)

    sp = common.add_command(sub, "stack", help="start, stop or inspect the local stack")
    sp.add_argument("action", choices=["start", "stop", "status"], help="start, stop, or print each component's state")
    common.add_stack_options(sp)
    sp.set_defaults(func=cmd_stack)

    sp = common.add_command(
        sub,
        "airflow",
        help="any Airflow CLI command, against the local stack",
        add_help=False,
        prefix_chars=_NO_OPTIONS,
    )
    sp.add_argument("args", nargs=argparse.REMAINDER, help="the Airflow command line, e.g. dags list")
    sp.set_defaults(func=cmd_airflow)

    sp = common.add_command(sub, "env", help="print the environment for the Airflow CLI")
    sp.set_defaults(func=cmd_env)
