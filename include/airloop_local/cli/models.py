"""``airloop models history|rollback``, ``airloop drift history`` and ``airloop alerts``: what happened to a
model (its aliases, its drift checks, its on-call alerts), and a manual rollback."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from airloop_local.cli import common

if TYPE_CHECKING:
    from airloop.storage import DataRoot
    from airloop_local.stack import StackSettings


@contextlib.contextmanager
def stack_mlflow(s: StackSettings, user: str) -> Iterator[str]:
    """Talk to the stack's MLflow as ``user`` for the block (its password from the state folder, set in the
    environment MLflow's client reads); yield the tracking URI.

    With ``MLFLOW_TRACKING_URI`` set in the shell, that server is used with the shell's own credentials: the
    stack's passwords are never sent to another server."""
    own = os.environ.get("MLFLOW_TRACKING_URI")
    if own:
        yield own
        return
    env = s.mlflow_env(user)
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env["MLFLOW_TRACKING_URI"]
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cmd_models(args: argparse.Namespace) -> int:
    """Alias history and manual rollback, against the stack's MLflow as its writer (or MLFLOW_TRACKING_URI)."""
    from airloop.storage import DataRoot

    s = common.settings(args)
    common.use_stack_env(s)
    model = common.known_model(args.model).name
    root = DataRoot(s.data_root)
    if args.action == "history":
        print_alias_history(root, model)
        return common.EXIT_OK
    return rollback(s, root, model, args.version, args.reason)


def print_alias_history(root: DataRoot, model: str) -> None:
    from airloop import registry

    history = registry.read_history(root, model)
    if not history:
        print(f"no alias changes recorded for {model} in {root.uri}")
    for r in history:
        now = "removed" if r["version"] is None else f"v{r['version']}"
        was = "unset" if r["replaced"] is None else f"v{r['replaced']}"
        print(f"{r['at']}  {r['alias']:10s} {now:<7s} (was {was})  by {r['by']}: {r['why']}")


def rollback(s: StackSettings, root: DataRoot, model: str, version: str, reason: str) -> int:
    """Make ``version`` champion at once; an unknown version (or the champion itself) is a usage error."""
    from mlflow import MlflowClient

    from airloop import registry
    from airloop_local import mlflow_auth

    by = f"cli/{os.environ.get('USER', 'unknown')}"
    with stack_mlflow(s, mlflow_auth.WRITER) as uri:
        try:
            records = registry.rollback(MlflowClient(uri), root, model, version, by=by, why=reason)
        except ValueError as e:
            raise common.UsageError(str(e)) from None
    for r in records:
        print(f"{r['alias']}: v{r['replaced']} -> v{r['version']}")
    return common.EXIT_OK


def print_registered_model(s: StackSettings, model: str) -> dict[str, str]:
    """Print the registered versions and aliases of a model in the stack's MLflow (read as its read-only
    user); return alias -> version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from airloop_local import mlflow_auth

    with stack_mlflow(s, mlflow_auth.READER) as uri:
        client = MlflowClient(uri)
        try:
            rm = client.get_registered_model(model)
        except MlflowException:
            print(f"\nMLflow: no registered model {model!r} yet")
            return {}
        versions = client.search_model_versions(f"name = '{model}'")
    aliases = {a: str(v) for a, v in (rm.aliases or {}).items()}
    print(
        f"\nMLflow model {model}: {len(versions)} version(s); aliases {aliases or 'none'}  "
        f"({s.mlflow_url}/#/models/{model})"
    )
    return aliases


def cmd_drift(args: argparse.Namespace) -> int:
    """Print the model's drift time series."""
    from airloop.storage import DataRoot

    model = common.known_model(args.model).name
    print_drift_history(DataRoot(common.settings(args).data_root), model, as_json=args.json)
    return common.EXIT_OK


def print_drift_history(root: DataRoot, model: str, as_json: bool) -> None:
    """One line per checked interval (``as_json``: one JSON object per line, every figure), then the plot."""
    from airloop import drift

    history = drift.read_history(root, model)
    if not history:
        print(f"no drift checks recorded for {model} in {root.uri}")
        return
    for r in history:
        if as_json:
            print(json.dumps(r, sort_keys=True))
            continue
        verdict = "DRIFT" if r["dataset_drift"] or r["prediction_drifted"] else "ok"
        print(
            f"{r['interval_start'][:10]} .. {r['interval_end'][:10]}  v{r['champion_version']:<3} {verdict:5s} "
            f"share {r['drift_share']:.2f}  prediction {r['prediction_score']}  rows {r['current_rows']}  "
            f"drifted {r['drifted_columns']}"
        )
    print(f"trend plot: {root.drift_trend(model)}")


def cmd_alerts(args: argparse.Namespace) -> int:
    """Print the on-call alerts of one model or all, newest last."""
    from airloop.storage import DataRoot

    models = common.known_models(args.model)
    print_alerts(DataRoot(common.settings(args).data_root), models, last=args.last, as_json=args.json)
    return common.EXIT_OK


def print_alerts(root: DataRoot, models: list[str], last: int, as_json: bool) -> None:
    """The ``last`` alerts of ``models``: what failed, its log and runbook (``as_json``: one object a line)."""
    from airloop.alerts import read_alerts

    alerts = [a for m in models for a in read_alerts(root, m)][-last:]
    for a in alerts:
        if as_json:
            print(json.dumps(a, sort_keys=True))
            continue
        print(f"{a['at']}  [{a['kind']}] {a['summary']}")
        if a.get("log_url"):
            print(f"    log:     {a['log_url']}\n    runbook: {a.get('runbook_url')} ({a.get('runbook')})")
    if not alerts:
        print(f"no alerts for {', '.join(models)} in {root.uri}")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``models``, ``drift`` and ``alerts``."""
    sp = common.add_command(sub, "models", help="a model's alias history, or a manual rollback")
    msub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = common.add_command(msub, "history", help="every alias change: who, when, why, which version it replaced")
    m.add_argument("model", help="the model (its pipeline config's name)")
    m = common.add_command(msub, "rollback", help="make an earlier version champion at once")
    m.add_argument("model", help="the model (its pipeline config's name)")
    m.add_argument("version", help="the registered version to make champion, e.g. 3")
    m.add_argument("--reason", required=True, help="why, for the alias history")
    sp.set_defaults(func=cmd_models)

    sp = common.add_command(sub, "drift", help="a model's drift history, one line per checked interval")
    sp.add_argument("action", choices=["history"], help="history: every drift check of the model")
    sp.add_argument("model", help="the model (its pipeline config's name)")
    sp.add_argument("--json", action="store_true", help="one JSON object per line, every figure")
    sp.set_defaults(func=cmd_drift)

    sp = common.add_command(sub, "alerts", help="on-call alerts of failed tasks (log URL, runbook)")
    sp.add_argument("model", nargs="?", help="one model (default: all)")
    sp.add_argument("--last", type=common.positive_int, default=20, help="how many, newest last (default 20)")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_alerts)
