"""``airloop replay | run | webhook send | traffic``: feed the local stack batches, runs, deliveries and
scoring requests."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airloop_local.cli import common

if TYPE_CHECKING:
    from airloop.config import PipelineConfig
    from airloop_local.stack import StackSettings


def cmd_replay(args: argparse.Namespace) -> int:
    """Land ``--days`` real days from ``--start`` in the landing area of a replay-sourced model."""
    from airloop.sources import replay_adapter
    from airloop.storage import DataRoot

    s = common.settings(args)
    common.use_stack_env(s)
    cfg = common.known_model(args.model or common.replay_model())
    if cfg.source.kind != "replay":
        raise common.UsageError(
            f"{cfg.name} has source.kind {cfg.source.kind}: its batches are dropped by the upstream system at "
            f"{landing_pattern(s, cfg)}; replay only fills models whose source.kind is replay"
        )
    corruptions = parse_corruptions(args.corrupt or [])
    days = [args.start + dt.timedelta(days=i) for i in range(args.days)]
    try:
        uris = replay_adapter().replay_days(
            DataRoot(s.data_root), cfg.name, days, file_name=cfg.source.file_name, corruptions=corruptions
        )
    except ValueError as e:  # a day outside the data set
        raise common.UsageError(str(e)) from None
    print(f"landed {len(uris)} daily batches: {uris[0]} .. {uris[-1]}")
    return common.EXIT_OK


def parse_corruptions(items: list[str]) -> dict[dt.date, str]:
    """``DATE:KIND`` values of ``--corrupt`` as day -> kind."""
    from airloop.sources import replay_adapter

    corruptions = replay_adapter().CORRUPTIONS

    out = {}
    for item in items:
        day, _, kind = item.partition(":")
        if kind not in corruptions:
            raise common.UsageError(f"--corrupt {item!r}: the kind after ':' must be one of {list(corruptions)}")
        out[common.iso_date(day)] = kind
    return out


def landing_pattern(s: StackSettings, cfg: PipelineConfig) -> str:
    """Where a model's daily batches land: ``<landing uri>/<model>/ds=<YYYY-MM-DD>/<file name>``."""
    from airloop.ingest import landing_uri
    from airloop.storage import DataRoot

    return landing_uri(cfg, DataRoot(s.data_root), "ds=<YYYY-MM-DD>")


def cmd_run(args: argparse.Namespace) -> int:
    """Start a DAG's run for an explicit data interval (``--start``, ``--days``) on the local stack."""
    from airloop_local.airflow_api import ApiError

    start, conf = _run_arguments(args)
    s = common.settings(args)
    try:
        run_id = common.api(s).trigger_interval(args.dag_id, start, args.days, conf, note="started by airloop run")
    except ApiError as e:
        if e.status != 404:
            raise
        raise common.UsageError(f"the stack at {s.base_url} has no DAG {args.dag_id!r}: {e.body[:300]}") from None
    print(f"{args.dag_id}: run {run_id} for the data interval [{start}, {start + dt.timedelta(days=args.days)})")
    return common.EXIT_OK


def _run_arguments(args: argparse.Namespace) -> tuple[dt.date, dict[str, Any]]:
    """``--start`` and ``--conf`` checked before the stack is touched."""
    try:
        start = dt.date.fromisoformat(args.start)
        conf = json.loads(args.conf) if args.conf else {}
    except ValueError as e:
        raise common.UsageError(f"run: {e}") from None
    if args.days < 1 or not isinstance(conf, dict):
        raise common.UsageError("run: --days must be at least 1 and --conf a JSON object")
    return start, conf


def cmd_webhook(args: argparse.Namespace) -> int:
    """Send one signed delivery and print the answer; 0 when it was accepted."""
    from airloop_local.webhook_client import UnknownWebhookSource, WebhookSender

    day = common.iso_date(args.day)
    try:
        status, answer = WebhookSender(common.settings(args)).send(args.source, day, args.uri, args.id)
    except UnknownWebhookSource as e:
        raise common.UsageError(str(e)) from None
    print(f"HTTP {status}: {json.dumps(answer)}")
    return common.EXIT_OK if status in (200, 202) else common.EXIT_FAILURE


def cmd_traffic(args: argparse.Namespace) -> int:
    """Send every row of a file to a model's server as one scoring request each (its request columns,
    sticky key and event time, as the model's config describes them); print the answers' counts."""
    from airloop.errors import DataProblem
    from airloop.serving import replay
    from airloop_local.cli.sample_inference import read_sample_as_batch

    s = common.settings(args)
    cfg = common.known_model(args.model)
    rows = read_sample_as_batch(cfg, Path(args.file))
    missing = [c for c in cfg.request_columns if c not in rows.columns]
    if missing:
        raise DataProblem(f"traffic: {args.file} lacks the request columns {missing} of {cfg.name}")
    url = args.url or s.model_server_url_for(cfg.name)
    counts = replay.replay(url, replay.bodies_for(cfg, rows), concurrency=args.concurrency)
    print(f"{cfg.name}: {len(rows)} rows of {args.file} sent to {url}: {dict(sorted(counts.items()))}")
    return common.EXIT_OK if counts.get("200", 0) == len(rows) else common.EXIT_FAILURE


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``replay``, ``webhook``, ``run`` and ``traffic``."""
    sp = common.add_command(sub, "replay", help="land real days of the replay source as daily batches")
    sp.add_argument(
        "--model",
        default=None,
        help="a model whose source.kind is replay (default: the first such config by name)",
    )
    sp.add_argument(
        "--start",
        type=dt.date.fromisoformat,
        default=common.DEMO_START,
        help=f"the first day, YYYY-MM-DD (default {common.DEMO_START})",
    )
    sp.add_argument("--days", type=common.positive_int, default=7, help="how many days from --start (default 7)")
    sp.add_argument(
        "--corrupt",
        action="append",
        metavar="DATE:KIND",
        help="break one day on purpose: null_column, missing_column, out_of_range, wrong_types, empty_file, not_csv",
    )
    sp.set_defaults(func=cmd_replay)

    sp = common.add_command(sub, "webhook", help="send a signed 'batch landed' delivery to the stack")
    wsub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    w = common.add_command(wsub, "send", help="sign with the stack's secret for SOURCE and POST it; prints the run id")
    w.add_argument("source", help="webhook source name (webhooks: in the pipeline config)")
    w.add_argument("--day", required=True, help="the data interval, YYYY-MM-DD")
    w.add_argument("--uri", help="where the batch lies (default: the model's landing file of that day)")
    w.add_argument("--id", help="delivery id (default: a new one; repeat one to see idempotency)")
    sp.set_defaults(func=cmd_webhook)

    sp = common.add_command(sub, "run", help="start a DAG run for an explicit data interval")
    sp.add_argument("dag_id", help="e.g. <model>__drift or <model>__ingest")
    sp.add_argument("--start", required=True, help="the interval's first day, YYYY-MM-DD")
    sp.add_argument("--days", type=int, default=1, help="the interval's length in days (default 1)")
    sp.add_argument("--conf", help="the run conf, a JSON object")
    sp.set_defaults(func=cmd_run)

    sp = common.add_command(sub, "traffic", help="send a file's rows to a model's server as requests")
    sp.add_argument("model", help="the model (its config names the request columns, key and event time)")
    sp.add_argument("file", help="rows in the model's schema: .csv, .parquet or .jsonl")
    sp.add_argument("--url", help="the server (default: the local stack's server of this model)")
    sp.add_argument("--concurrency", type=common.positive_int, default=4, help="requests in flight at once (default 4)")
    sp.set_defaults(func=cmd_traffic)
