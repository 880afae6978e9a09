"""``airloop quarantine list|show|release|reject``: the batches the gate refused, and the decisions on them."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from airloop_local.cli import common

if TYPE_CHECKING:
    from airloop.quarantine import QuarantinedBatch
    from airloop.storage import DataRoot
    from airloop_local.stack import StackSettings


def cmd_quarantine(args: argparse.Namespace) -> int:
    from airloop.storage import DataRoot

    s = common.settings(args)
    common.use_stack_env(s)
    root = DataRoot(s.data_root)
    if args.action == "list":
        print_quarantine(root, common.known_models(args.model), include_decided=args.all)
        return common.EXIT_OK
    model = common.known_model(args.model).name
    partition = checked_partition(args.partition)
    batch = named_batch(root, model, partition)
    if args.action == "show":
        print(json.dumps({**batch.__dict__, "report": root.file_uri(batch.report_uri)}, indent=2, default=str))
        return common.EXIT_OK
    if args.action == "reject":
        from airloop import quarantine

        record = quarantine.reject(root, model, partition, reason=args.reason)
        print(f"rejected {model}/{partition}: {json.dumps(record)}")
        return common.EXIT_OK
    return release(s, model, partition, wait=args.wait)


def checked_partition(text: str) -> str:
    """The partition named on the command line (a bare ``YYYY-MM-DD`` means ``ds=YYYY-MM-DD``); a
    UsageError naming the forms a partition takes when it is not one (a path such as ``../../raw/...``)."""
    from airloop.confine import UriRejected, check_partition

    partition = text if "=" in text else f"ds={text}"
    try:
        return check_partition(partition)
    except UriRejected as e:
        raise common.UsageError(str(e)) from None


def named_batch(root: DataRoot, model: str, partition: str) -> QuarantinedBatch:
    """The quarantined batch named on the command line; a UsageError when there is none."""
    from airloop import quarantine
    from airloop.errors import QuarantineError

    try:
        return quarantine.get_quarantined(root, model, partition)
    except QuarantineError as e:
        raise common.UsageError(str(e)) from None


def print_quarantine(root: DataRoot, models: list[str], include_decided: bool) -> None:
    """The quarantined batches of ``models``: status, stage, first failures and report."""
    from airloop import quarantine

    entries = quarantine.list_quarantined(root, models, include_decided=include_decided)
    if not entries:
        print(
            "no batches in quarantine" + ("" if include_decided else " awaiting a decision (--all shows decided ones)")
        )
    for e in entries:
        print(f"{e.model}/{e.partition}  {e.status:11s} {e.stage:10s} rows={e.rows}  run={e.run_id}")
        for f in e.failures[:5]:
            print(f"    - {f[:200]}")
        print(f"    report: {root.file_uri(e.report_uri)}")


def release(s: StackSettings, model: str, partition: str, wait: bool) -> int:
    """Release through the model's release DAG, so that Airflow emits the Asset event; with ``wait``,
    exit 1 when the release run fails."""
    from airloop.config import get_pipeline

    api = common.api(s)
    dag_id = get_pipeline(model).dag_id("release")
    api.unpause(dag_id)
    run = api.trigger(dag_id, {"partition": partition})
    print(f"triggered {dag_id} run {run['dag_run_id']}: {s.base_url}/dags/{dag_id}/runs/{run['dag_run_id']}")
    if not wait:
        return common.EXIT_OK
    state = common.wait_runs(api, dag_id, {run["dag_run_id"]}, timeout_s=600)[run["dag_run_id"]]
    print(f"release {state}")
    return common.EXIT_OK if state == "success" else common.EXIT_FAILURE


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``quarantine list|show|release|reject``."""
    sp = common.add_command(sub, "quarantine", help="list, show, release or reject quarantined batches")
    qsub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = common.add_command(qsub, "list", help="batches in quarantine")
    q.add_argument("--model", help="one model (default: all)")
    q.add_argument("--all", action="store_true", help="include released, rejected and superseded batches")
    for name, helptext in (
        ("show", "one batch as JSON"),
        ("release", "re-validate and publish (runs <model>__release)"),
        ("reject", "give up on a batch; it is kept, never trained on"),
    ):
        q = common.add_command(qsub, name, help=helptext)
        q.add_argument("model", help="the model whose batch it is")
        q.add_argument("partition", help="e.g. ds=2013-01-08 (or just 2013-01-08)")
        if name == "reject":
            q.add_argument("--reason", required=True, help="why, for the next person who looks")
        if name == "release":
            q.add_argument("--wait", action="store_true", help="wait for the release run and exit non-zero if it fails")
    sp.set_defaults(func=cmd_quarantine)
