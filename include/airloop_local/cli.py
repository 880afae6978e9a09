"""``airloop``: the project's command line.

airloop demo                      set up, replay real flights, run them through the real scheduler
airloop init | settings apply     prepare the Airflow home / apply airflow_settings.yaml
airloop stack start|stop|status   the local Airflow (API server + UI, scheduler, DAG processor, triggerer)
airloop replay                    land days of nycflights13 in the landing area (replay-sourced models)
airloop model init|check          write a new model's YAML and starter suite from a sample / check one
airloop quarantine list|show|release|reject
airloop webhook send SOURCE       send a signed "batch landed" delivery to the stack's webhook route
airloop traffic MODEL FILE        send each row of a file to the model's server as a scoring request
airloop run DAG_ID --start D      start a DAG's run for an explicit data interval
airloop alerts [MODEL]            the on-call alerts of failed tasks (log URL, runbook)
airloop airflow ...               any Airflow CLI command against the local stack
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from airloop_local import stack

DEMO_MODEL = "flight_delays"
SUMMER_START = dt.date(2013, 7, 1)
DEMO_START = dt.date(2013, 1, 1)


def _settings(args: argparse.Namespace) -> stack.StackSettings:
    from airloop.storage import state_dir

    return stack.StackSettings.load(
        args.state_dir or state_dir(),
        port=getattr(args, "port", None),
        database_url=getattr(args, "database_url", None),
    )


def _use_stack_env(s: stack.StackSettings) -> None:
    """Make domain calls in this process see the same data root as the stack's tasks."""
    os.environ["AIRLOOP_HOME"] = s.state_dir
    os.environ["AIRLOOP_DATA_ROOT"] = s.data_root


def _api(s: stack.StackSettings) -> Any:
    from airloop_local.airflow_api import AirflowApi

    password = stack.admin_password(s)
    if not password or not stack.health(s):
        raise stack.StackError(f"the local stack is not running at {s.base_url}; start it with `airloop stack start`")
    return AirflowApi(s.base_url, "admin", password)


def _print_login(s: stack.StackSettings) -> None:
    print(
        f"\nAirflow UI:  {s.base_url}   (user: admin, password: {stack.admin_password(s) or '<created on first start>'})"
    )
    print(f"             the password is kept in {s.airflow_home / 'simple_auth_manager_passwords.json.generated'}")
    print(f"MLflow UI:   {s.mlflow_url}   (models, runs, lineage tags)")
    for model in s.served_models():
        print(
            f"Model:       {s.model_server_url_for(model)}/invocations   ({model}: MLflow scoring protocol; "
            "/version, /metrics)"
        )
    print(f"Data root:   {s.data_root}")
    print(f"Logs:        {Path(s.state_dir) / 'logs'} (components), {s.airflow_home / 'logs'} (tasks)")
    print("Stop with:   make stop   (or .venv/bin/airloop stack stop)")


# -- commands -----------------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    s = _settings(args)
    t = time.monotonic()
    stack.init(s)
    print(f"Airflow home ready at {s.airflow_home} on {stack._safe_url(s.db_url)} ({time.monotonic() - t:.1f} s)")
    return 0


def cmd_settings_apply(args: argparse.Namespace) -> int:
    s = _settings(args)
    stack.write_airflow_cfg(s)
    print(f"applied {args.file}: {stack.apply_settings(s, args.file)}")
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    s = _settings(args)
    if args.action == "start":
        if not (s.airflow_home / "airflow.cfg").is_file():
            stack.init(s)
        else:
            s.save()
            stack.write_airflow_cfg(s)
        t = time.monotonic()
        exited = stack.start(s)
        print(f"Local stack healthy in {time.monotonic() - t:.1f} s")
        _warn_exited_servers(s, exited)
        _print_login(s)
    elif args.action == "stop":
        stopped = stack.stop(s)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    else:
        return _print_stack_status(s)
    return 0


def _warn_exited_servers(s: stack.StackSettings, models: list[str]) -> None:
    for model in models:
        log = Path(s.state_dir) / "logs" / f"{stack.model_server_component(model)}.log"
        print(f"WARNING: the model server of {model} exited; the other models are served. See {log}", file=sys.stderr)


def _print_stack_status(s: stack.StackSettings) -> int:
    """One line per component (each model's server with its address and connection); 0 when healthy."""
    from airloop.config import load_all_pipelines, load_pipelines

    running = stack.running_components(s)
    h = stack.health(s)
    known = stack.components(s)
    width = max(len(c) for c in [*known, *running])
    for c in stack.COMPONENTS:
        print(f"{c:{width}s}  {f'running (pid {running[c]})' if c in running else 'stopped'}")
    for cfg in sorted(load_all_pipelines(), key=lambda c: c.name):
        c = stack.model_server_component(cfg.name)
        state = f"running (pid {running[c]})" if c in running else "stopped"
        print(f"{c:{width}s}  {state}  {s.model_server_url_for(cfg.name)}  (connection {cfg.model_server_conn_id})")
    for c in sorted(set(running) - set(known)):
        print(f"{c:{width}s}  running (pid {running[c]}), but its model has no valid config now; restart the stack")
    for path, error in load_pipelines()[1].items():
        print(f"not served: {path}: {error.splitlines()[0]}")
    print(f"health: {json.dumps(h) if h else 'API server not reachable at ' + s.base_url}")
    if running:
        _print_login(s)
    return 0 if h else 1


def _parse_corruptions(items: list[str]) -> dict[dt.date, str]:
    out = {}
    for item in items or []:
        day, _, kind = item.partition(":")
        out[dt.date.fromisoformat(day)] = kind
    return out


def cmd_replay(args: argparse.Namespace) -> int:
    from airloop.config import get_pipeline
    from airloop.sources import nycflights13
    from airloop.storage import DataRoot

    s = _settings(args)
    _use_stack_env(s)
    cfg = get_pipeline(args.model)
    if cfg.source.kind != "replay":
        print(
            f"airloop: {cfg.name} has source.kind {cfg.source.kind}: its batches are dropped by the upstream "
            f"system at {_landing_pattern(s, cfg)}; replay only fills models whose source is the nycflights13 "
            "replay",
            file=sys.stderr,
        )
        return 2
    days = [args.start + dt.timedelta(days=i) for i in range(args.days)]
    uris = nycflights13.replay_days(
        DataRoot(s.data_root),
        cfg.name,
        days,
        file_name=cfg.source.file_name,
        corruptions=_parse_corruptions(args.corrupt),
    )
    print(f"landed {len(uris)} daily batches: {uris[0]} .. {uris[-1]}")
    return 0


def _landing_pattern(s: stack.StackSettings, cfg: Any) -> str:
    """Where a model's daily batches land: ``<landing uri>/<model>/ds=<YYYY-MM-DD>/<file name>``."""
    from airloop.ingest import landing_uri
    from airloop.storage import DataRoot

    return landing_uri(cfg, DataRoot(s.data_root), "ds=<YYYY-MM-DD>")


def cmd_quarantine(args: argparse.Namespace) -> int:
    from airloop import quarantine
    from airloop.config import get_pipeline, load_all_pipelines
    from airloop.storage import DataRoot

    s = _settings(args)
    _use_stack_env(s)
    root = DataRoot(s.data_root)
    if args.action == "list":
        models = [args.model] if args.model else [c.name for c in load_all_pipelines()]
        entries = quarantine.list_quarantined(root, models, include_decided=args.all)
        if not entries:
            print("no batches in quarantine" + ("" if args.all else " awaiting a decision (--all shows decided ones)"))
        for e in entries:
            print(f"{e.model}/{e.partition}  {e.status:11s} {e.stage:10s} rows={e.rows}  run={e.run_id}")
            for f in e.failures[:5]:
                print(f"    - {f[:200]}")
            print(f"    report: {root.file_uri(e.report_uri)}")
        return 0
    partition = args.partition if "=" in args.partition else f"ds={args.partition}"
    if args.action == "show":
        e = quarantine.get_quarantined(root, args.model, partition)
        print(json.dumps({**e.__dict__, "report": root.file_uri(e.report_uri)}, indent=2, default=str))
        return 0
    if args.action == "reject":
        record = quarantine.reject(root, args.model, partition, reason=args.reason)
        print(f"rejected {args.model}/{partition}: {json.dumps(record)}")
        return 0
    # release: through the model's release DAG, so the Asset event is emitted by Airflow
    cfg = get_pipeline(args.model)
    quarantine.get_quarantined(root, cfg.name, partition)  # clear error now if there is no such batch
    api = _api(s)
    dag_id = cfg.dag_id("release")
    api.unpause(dag_id)
    run = api.trigger(dag_id, {"partition": partition})
    print(f"triggered {dag_id} run {run['dag_run_id']}: {s.base_url}/dags/{dag_id}/runs/{run['dag_run_id']}")
    if args.wait:
        state = _wait_runs(api, dag_id, {run["dag_run_id"]}, timeout_s=600)[run["dag_run_id"]]
        print(f"release {state}")
        return 0 if state == "success" else 1
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Alias history and manual rollback, against the stack's MLflow (or MLFLOW_TRACKING_URI)."""
    from mlflow import MlflowClient

    from airloop import registry
    from airloop.storage import DataRoot

    s = _settings(args)
    _use_stack_env(s)
    root = DataRoot(s.data_root)
    if args.action == "history":
        for r in registry.read_history(root, args.model):
            now = "removed" if r["version"] is None else f"v{r['version']}"
            was = "unset" if r["replaced"] is None else f"v{r['replaced']}"
            print(f"{r['at']}  {r['alias']:10s} {now:<7s} (was {was})  by {r['by']}: {r['why']}")
        return 0
    client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or s.mlflow_url)
    try:
        records = registry.rollback(
            client, root, args.model, args.version, by=f"cli/{os.environ.get('USER', 'unknown')}", why=args.reason
        )
    except ValueError as e:
        print(f"airloop: {e}", file=sys.stderr)
        return 2
    for r in records:
        print(f"{r['alias']}: v{r['replaced']} -> v{r['version']}")
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    """Print the model's drift time series (``reports/<model>/drift/history.jsonl``)."""
    from airloop import drift
    from airloop.storage import DataRoot

    s = _settings(args)
    root = DataRoot(s.data_root)
    history = drift.read_history(root, args.model)
    if not history:
        print(f"no drift checks recorded for {args.model} in {root.uri}")
        return 0
    for r in history:
        if args.json:
            print(json.dumps(r, sort_keys=True))
            continue
        verdict = "DRIFT" if r["dataset_drift"] or r["prediction_drifted"] else "ok"
        print(
            f"{r['interval_start'][:10]} .. {r['interval_end'][:10]}  v{r['champion_version']:<3} {verdict:5s} "
            f"share {r['drift_share']:.2f}  prediction {r['prediction_score']}  rows {r['current_rows']}  "
            f"drifted {r['drifted_columns']}"
        )
    print(f"trend plot: {root.uri}/reports/{args.model}/drift/trend.html")
    return 0


def send_webhook(
    s: stack.StackSettings,
    source_name: str,
    day: dt.date,
    uri: str | None = None,
    delivery_id: str | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, Any]]:
    """Sign a "batch landed" delivery with the stack's secret for ``source_name`` and POST it to the API
    server, as an upstream system would. Returns the HTTP status and the JSON answer."""
    import urllib.error
    import urllib.request
    import uuid

    from airloop import webhooks as wh
    from airloop.config import find_webhook_source

    found = find_webhook_source(source_name)
    if found is None:
        raise SystemExit(f"no webhook source named {source_name!r}; see webhooks: in the pipeline configs")
    cfg, source = found
    if uri is None:
        from airloop.ingest import landing_uri
        from airloop.storage import DataRoot

        uri = landing_uri(cfg, DataRoot(s.data_root), f"ds={day.isoformat()}")
    body = json.dumps({"source_uri": uri, "day": day.isoformat()}).encode()
    headers = wh.signed_headers(
        source.scheme, s.webhook_secret(source.connection_id), delivery_id or f"msg_{uuid.uuid4().hex}", body
    )
    req = urllib.request.Request(
        f"{s.base_url}/airloop/webhooks/{source_name}",
        data=body,
        method="POST",
        headers={**headers, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _send_webhook_retrying(s: stack.StackSettings, source: str, day: dt.date) -> tuple[int, dict[str, Any]]:
    """One delivery, re-sent with the same id while the server answers 503 (SQLite busy), as senders do."""
    import uuid

    delivery_id = f"msg_{uuid.uuid4().hex}"
    for attempt in range(6):
        status, answer = send_webhook(s, source, day, delivery_id=delivery_id)
        if status != 503:
            break
        time.sleep(2.0 * (attempt + 1))
    if status not in (200, 202):
        raise stack.StackError(f"webhook {source} for {day} refused: HTTP {status} {answer}")
    return status, answer


def cmd_webhook(args: argparse.Namespace) -> int:
    s = _settings(args)
    status, answer = send_webhook(s, args.source, dt.date.fromisoformat(args.day), args.uri, args.id)
    print(f"HTTP {status}: {json.dumps(answer)}")
    return 0 if status in (200, 202) else 1


def cmd_traffic(args: argparse.Namespace) -> int:
    """Send every row of a file to a model's server as one scoring request each (its request columns,
    sticky key and event time, as the model's config describes them); prints the answers' counts."""
    from airloop.config import get_pipeline
    from airloop.errors import ConfigError
    from airloop.serving import replay

    s = _settings(args)
    try:
        cfg = get_pipeline(args.model)
    except ConfigError as e:
        print(f"airloop traffic: {e}", file=sys.stderr)
        return 1
    try:
        rows = _read_sample_as_batch(cfg, Path(args.file))
    except UsageError as e:
        print(f"airloop traffic: {e}", file=sys.stderr)
        return 2
    missing = [c for c in cfg.request_columns if c not in rows.columns]
    if missing:
        print(f"airloop traffic: {args.file} lacks the request columns {missing} of {cfg.name}", file=sys.stderr)
        return 1
    url = args.url or s.model_server_url_for(cfg.name)
    counts = replay.replay(url, replay.bodies_for(cfg, rows), concurrency=args.concurrency)
    print(f"{cfg.name}: {len(rows)} rows of {args.file} sent to {url}: {dict(sorted(counts.items()))}")
    return 0 if counts.get("200", 0) == len(rows) else 1


def cmd_run(args: argparse.Namespace) -> int:
    """Start a DAG's run for an explicit data interval (``--start``, ``--days``) on the local stack."""
    try:
        start = dt.date.fromisoformat(args.start)
        conf = json.loads(args.conf) if args.conf else {}
    except ValueError as e:
        print(f"airloop run: {e}", file=sys.stderr)
        return 2
    if args.days < 1 or not isinstance(conf, dict):
        print("airloop run: --days must be at least 1 and --conf a JSON object", file=sys.stderr)
        return 2
    s = _settings(args)
    run_id = trigger_interval_run(_api(s), args.dag_id, start, args.days, conf, note="started by airloop run")
    end = start + dt.timedelta(days=args.days)
    print(f"{args.dag_id}: run {run_id} for the data interval [{start}, {end})")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    """Print the on-call alerts of a model (``reports/<model>/alerts.jsonl``), newest last."""
    from airloop.alerts import read_alerts
    from airloop.config import load_all_pipelines
    from airloop.storage import DataRoot

    s = _settings(args)
    root = DataRoot(s.data_root)
    models = [args.model] if args.model else [c.name for c in load_all_pipelines()]
    alerts = [a for m in models for a in read_alerts(root, m)][-args.last :]
    for a in alerts:
        if args.json:
            print(json.dumps(a, sort_keys=True))
            continue
        print(f"{a['at']}  [{a['kind']}] {a['summary']}")
        if a.get("log_url"):
            print(f"    log:     {a['log_url']}\n    runbook: {a.get('runbook_url')} ({a.get('runbook')})")
    if not alerts:
        print(f"no alerts for {', '.join(models)} in {root.uri}")
    return 0


def cmd_airflow(args: argparse.Namespace) -> int:
    s = _settings(args)
    return stack.run_airflow(s, *args.args, check=False).returncode


def cmd_env(args: argparse.Namespace) -> int:
    s = _settings(args)
    env = s.env()
    for k in ("AIRFLOW_HOME", "AIRLOOP_HOME", "AIRLOOP_DATA_ROOT"):
        print(f"export {k}={env[k]}")
    return 0


TERMINAL = {"success", "failed"}


def _wait_runs(
    api: Any, dag_id: str, run_ids: set[str] | None, timeout_s: float, expect: int | None = None
) -> dict[str, str]:
    """Poll until the given runs (or ``expect`` runs of the DAG) are finished; return run_id -> state."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        runs = {r["dag_run_id"]: r["state"] for r in api.dag_runs(dag_id)}
        if run_ids is not None:
            runs = {k: v for k, v in runs.items() if k in run_ids}
        done = {k: v for k, v in runs.items() if v in TERMINAL}
        line = f"  {dag_id}: {len(done)}/{expect or len(run_ids or runs)} runs finished " + json.dumps(
            {s: sum(1 for v in runs.values() if v == s) for s in sorted(set(runs.values()))}
        )
        if line != last:
            print(line, flush=True)
            last = line
        target = expect if expect is not None else len(run_ids or ())
        if len(done) >= target and (run_ids is None or set(done) >= run_ids):
            return runs
        if time.monotonic() > deadline:
            raise stack.StackError(f"runs of {dag_id} did not finish within {timeout_s:.0f} s: {runs}")
        time.sleep(3.0)


def _wait_idle(api: Any, dag_ids: list[str], timeout_s: float, settle_s: float = 20.0) -> None:
    """Wait until the asset-triggered DAGs have no queued or running runs for ``settle_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        states = {d: [r["state"] for r in api.dag_runs(d)] for d in dag_ids}
        busy = any(st in ("queued", "running") for v in states.values() for st in v)
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle_s:
            for d, v in states.items():
                print(f"  {d}: {len(v)} runs " + json.dumps({x: v.count(x) for x in sorted(set(v))}), flush=True)
            return
        time.sleep(3.0)
    raise stack.StackError(f"{dag_ids} still busy after {timeout_s:.0f} s")


def _print_models(s: stack.StackSettings, model: str) -> dict[str, str]:
    """Print the registered versions and aliases of a model; return alias -> version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(s.mlflow_url)
    try:
        rm = client.get_registered_model(model)
    except MlflowException:
        print(f"\nMLflow: no registered model {model!r} yet")
        return {}
    aliases = {a: str(v) for a, v in (rm.aliases or {}).items()}
    versions = client.search_model_versions(f"name = '{model}'")
    print(
        f"\nMLflow model {model}: {len(versions)} version(s); aliases {aliases or 'none'}  ({s.mlflow_url}/#/models/{model})"
    )
    return aliases


def _traffic(cfg: Any, days: list[dt.date]) -> list[tuple[str | None, bytes, str | None]]:
    """One scoring request per real flight of ``days`` (with its event time), as the model's config
    describes its requests."""
    import pandas as pd

    from airloop.serving import replay
    from airloop.sources import nycflights13

    rows = pd.concat([nycflights13.day_frame(d) for d in days], ignore_index=True)
    return replay.bodies_for(cfg, rows)


def _replay_traffic(s: stack.StackSettings, cfg: Any, days: list[dt.date]) -> dict[str, int]:
    """Send every flight of ``days`` once as a scoring request to the model's server."""
    from airloop.serving import replay

    return dict(replay.replay(s.model_server_url_for(cfg.name), _traffic(cfg, days), concurrency=6))


def _canary_on_real_traffic(
    s: stack.StackSettings, api: Any, cfg: Any, days: list[dt.date], timeout_s: float
) -> list[dict[str, Any]]:
    """Replay later real days as live scoring requests while the deploy DAG walks its canary steps.

    :returns: the rollouts that ran (their state files), oldest first
    """
    from airloop.serving import replay
    from airloop.storage import DataRoot

    bodies = _traffic(cfg, days)
    url = s.model_server_url_for(cfg.name)
    done = threading.Event()
    counts: dict[str, int] = {}
    sender = threading.Thread(
        target=lambda: counts.update(replay.replay(url, bodies, concurrency=4, loop=True, stop=done.is_set)),
        daemon=True,
    )
    sender.start()
    try:
        _wait_idle(api, [cfg.dag_id("deploy")], timeout_s=timeout_s, settle_s=15.0)
    finally:
        done.set()
        sender.join(timeout=60)
    print(
        f"  traffic: {len(bodies)} real flights of {days[0]} .. {days[-1]} replayed as requests: "
        + json.dumps(dict(sorted(counts.items()))),
        flush=True,
    )
    root = DataRoot(s.data_root)
    folder = f"{root.uri}/reports/{cfg.name}/canary"
    states = [root.read_json(f"{folder}/{name}") for name in root.list_names(folder) if name.endswith(".json")]
    for st in sorted(states, key=lambda x: x["started_at"]):
        print(f"  canary of v{st['version']} (champion was v{st['champion_version']}): {st['status']}")
        for d in st["decisions"]:
            f = d["figures"]
            print(
                f"    {d['percent']:>3}%: {d['action']:8s} {d['reason']}  [challenger {f['challenger_requests']:.0f} req, "
                f"5xx {f['challenger_5xx_rate']:.2%}, p{100 * f.get('latency_quantile', 0.99):.4g} latency "
                f"{f['p99_latency_s']}, PSI {f['prediction_psi']}, "
                f"online metric {f['online_metric']}]"
            )
    return states


def trigger_interval_run(
    api: Any,
    dag_id: str,
    day: dt.date,
    days: int = 1,
    conf: dict[str, Any] | None = None,
    note: str = "replayed interval",
) -> str:
    """Start the run of one data interval of ``days`` days from ``day`` (idempotent: an existing run of
    that interval is reused).

    Backfills would do the same, but Airflow refuses to create them on SQLite while the scheduler runs;
    a run with an explicit data interval works on every metadata database.
    """
    from airloop_local.airflow_api import ApiError

    run_id = f"replay__{day.isoformat()}"
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    body = {
        "dag_run_id": run_id,
        "logical_date": start.isoformat(),
        "data_interval_start": start.isoformat(),
        "data_interval_end": (start + dt.timedelta(days=days)).isoformat(),
        "conf": conf or {},
        "note": note,
    }
    for attempt in range(6):
        try:
            api.post(f"/api/v2/dags/{dag_id}/dagRuns", body)
            return run_id
        except ApiError as e:
            if e.status == 409:  # this interval already has a run (also: a retried request that had landed)
                return run_id
            # SQLite answers "database is locked" (a 500) while another process writes: wait and retry;
            # the fixed run id makes the retry safe
            if e.status < 500 or attempt == 5:
                raise
            time.sleep(2.0 * (attempt + 1))
    return run_id


def cmd_demo(args: argparse.Namespace) -> int:
    """Set up, replay real days (one deliberately broken), run them through the real scheduler."""
    from airloop.config import get_pipeline
    from airloop.sources import nycflights13
    from airloop.storage import DataRoot

    t0 = time.monotonic()
    s = _settings(args)
    _use_stack_env(s)
    cfg = get_pipeline(DEMO_MODEL)
    print(f"[1/7] Airflow home at {s.airflow_home} ({stack._safe_url(s.db_url)})", flush=True)
    stack.init(s)
    days = [DEMO_START + dt.timedelta(days=i) for i in range(args.days + 1)]
    bad_day = days[-1]
    print(
        f"[2/7] Landing {args.days} real days of flights from {days[0]}, and {bad_day} with a unit mix-up "
        "(distance in metres, an impossible month) that the gate must stop",
        flush=True,
    )
    nycflights13.replay_days(
        DataRoot(s.data_root), cfg.name, days, file_name=cfg.source.file_name, corruptions={bad_day: "out_of_range"}
    )
    print(f"[3/7] Starting the local stack on {s.base_url}", flush=True)
    _warn_exited_servers(s, stack.start(s))
    api = _api(s)
    dag_id = cfg.dag_id("ingest")
    api.wait_for_dag(dag_id)
    for verb in ("release", "features", "train", "deploy", "drift"):
        api.wait_for_dag(cfg.dag_id(verb))
    for verb in ("ingest", "features", "train", "deploy", "drift"):
        api.unpause(cfg.dag_id(verb))
    print(f"[4/7] Running {dag_id} for the data intervals {days[0]} .. {bad_day} through the scheduler", flush=True)
    run_ids = {trigger_interval_run(api, dag_id, day) for day in days}
    runs = _wait_runs(api, dag_id, run_ids, timeout_s=args.timeout)
    print(
        "[5/7] Features (Spark) and training (local process, MLflow) follow until a first champion serves", flush=True
    )
    _wait_idle(api, [cfg.dag_id("features"), cfg.dag_id("train"), cfg.dag_id("deploy")], timeout_s=args.timeout)
    root = DataRoot(s.data_root)
    summer = [SUMMER_START + dt.timedelta(days=i) for i in range(14)]
    week, later = summer[7:], [SUMMER_START + dt.timedelta(days=14 + i) for i in range(7)]
    print(
        f"[6/7] Summer: {summer[0]} .. {summer[-1]} lands and is ingested; the January champion scores the "
        f"flights of {week[0]} .. {week[-1]} (replayed with their event times); {cfg.dag_id('drift')} checks "
        "that week",
        flush=True,
    )
    nycflights13.replay_days(root, cfg.name, summer, file_name=cfg.source.file_name)
    runs.update(_wait_runs(api, dag_id, {trigger_interval_run(api, dag_id, d) for d in summer}, timeout_s=args.timeout))
    _wait_idle(api, [cfg.dag_id("features"), cfg.dag_id("train")], timeout_s=args.timeout)
    counts = _replay_traffic(s, cfg, week)
    print(f"  traffic: {json.dumps(dict(sorted(counts.items())))}", flush=True)
    drift_run = trigger_interval_run(api, cfg.dag_id("drift"), week[0], days=7)
    drift_state = _wait_runs(api, cfg.dag_id("drift"), {drift_run}, timeout_s=args.timeout)[drift_run]
    args.action, args.model, args.json = "history", cfg.name, False
    cmd_drift(args)
    _wait_idle(api, [cfg.dag_id("train")], timeout_s=args.timeout, settle_s=10.0)
    retrains = [r for r in api.dag_runs(cfg.dag_id("train")) if r["dag_run_id"].startswith("drift__")]
    for r in retrains:
        ctx = (r.get("conf") or {}).get("drift") or {}
        print(
            f"  {cfg.dag_id('train')} run {r['dag_run_id']}: {r['state']} (conf reason=drift; drifted "
            f"{sorted(ctx.get('drifted_columns', {}))}, share {ctx.get('drift_share')}, prediction score "
            f"{ctx.get('prediction_score')})",
            flush=True,
        )
    print(
        f"[7/7] {later[0]} .. {later[-1]} lands, announced by signed webhooks (outcomes for the online metric), and "
        "is replayed as live traffic "
        f"while {cfg.dag_id('deploy')} canaries the retrained challenger (steps {list(cfg.canary.steps)}%)",
        flush=True,
    )
    nycflights13.replay_days(root, cfg.name, later, file_name=cfg.source.file_name)
    # these days are announced the way an upstream system would: a signed webhook per landed batch
    source = cfg.webhooks[0].name
    hook_runs = set()
    for d in later:
        status, answer = _send_webhook_retrying(s, source, d)
        print(f"  webhook {source} {d}: HTTP {status} -> run {answer.get('dag_run_id')}", flush=True)
        hook_runs.add(answer["dag_run_id"])
    runs.update(_wait_runs(api, dag_id, hook_runs, timeout_s=args.timeout))
    rollouts = _canary_on_real_traffic(s, api, cfg, later, timeout_s=args.timeout)
    print(f"Done in {time.monotonic() - t0:.0f} s", flush=True)
    ok = sum(1 for v in runs.values() if v == "success")
    failed = sorted(k for k, v in runs.items() if v == "failed")
    print(f"\n{dag_id}: {ok} successful runs, {len(failed)} failed: {failed}")
    args.action, args.model, args.all = "list", DEMO_MODEL, False
    cmd_quarantine(args)
    aliases = _print_models(s, cfg.name)
    print("\nOn-call alerts (one per failed task; `airloop alerts`):")
    args.model, args.last, args.json = cfg.name, 5, False
    cmd_alerts(args)
    print(
        f"\nIn the UI: Dags > {dag_id} shows the runs; in the failed run, task validate_batch > Details has "
        "the extra links 'Validation report' and 'Runbook'; Browse > Quarantine lists quarantined batches. "
        f"Dags > {cfg.dag_id('deploy')} shows the canary (watch_canary's log has each step's figures); the "
        f"train tasks link their MLflow run and model version; the last week's ingest runs came from webhooks; "
        f"`airloop models history {cfg.name}` prints the alias history."
    )
    _print_login(s)
    # Success means: every real day published, exactly the broken day stopped at the gate, a champion
    # serves, summer traffic was found drifting and retrained on, and the retrained model's canary was
    # decided on real traffic.
    decided = any(r["status"] in ("promoted", "rolled_back") for r in rollouts)
    drifted = drift_state == "success" and any(r["state"] == "success" for r in retrains)
    return (
        0
        if (
            ok == args.days + 21
            and failed == [f"replay__{bad_day.isoformat()}"]
            and "champion" in aliases
            and drifted
            and decided
        )
        else 1
    )


# -- model init / check ----------------------------------------------------------------------------------
#: sample file extensions and the source.format they map to
SAMPLE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
#: words in a column name that hint at a timestamp (so do the endings _at and _ts)
TIMESTAMP_HINTS = ("date", "time")
#: |r| (Pearson or rank) with the target above which a column is flagged as likely leakage
LEAKAGE_CORRELATION = 0.95
#: a starter null check allows this much more missing share than the sample shows
NULL_MARGIN = 0.1
#: a string column with at most this many distinct values gets a value-set check
MAX_VALUE_SET = 20


class UsageError(ValueError):
    """The command was called wrongly (bad argument, missing or unreadable sample): exit code 2."""


def _sample_format(path: Path) -> str:
    fmt = SAMPLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"{path}: cannot tell the sample's format from {path.suffix or 'no extension'!r}; "
            f"name it {', '.join(sorted(SAMPLE_FORMATS))}"
        )
    if not path.is_file():
        raise UsageError(f"sample {path} not found")
    return fmt


def _read_sample(path: Path) -> Any:
    """The sample as ingestion reads a batch of its format, before any column is declared a timestamp."""
    import pandas as pd

    fmt = _sample_format(path)
    try:
        if fmt == "csv":
            df = pd.read_csv(path, low_memory=False)
        elif fmt == "parquet":
            df = pd.read_parquet(path)
            df = df.reset_index(drop=all(name is None for name in df.index.names))
        else:  # JSON keeps its own types, as ingestion reads it
            df = pd.read_json(path, lines=True, dtype=False, convert_dates=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, OSError) as e:
        raise UsageError(f"sample {path} is not a readable {fmt} file: {type(e).__name__}: {e}") from None
    if df.empty:
        raise UsageError(f"sample {path} has no rows; a sample needs rows to infer types, ranges and leakage from")
    bad = [c for c in df.columns if not isinstance(c, str) or not c]
    if bad:
        raise UsageError(f"sample {path} has columns without a text name: {bad}")
    return df


def _read_sample_as_batch(cfg: Any, path: Path) -> Any:
    """The sample as ingestion would store it for this model (timestamps parsed), whatever its format."""
    from airloop.ingest import read_batch

    fmt = _sample_format(path)
    as_batch = cfg.model_copy(update={"source": cfg.source.model_copy(update={"format": fmt})})
    return read_batch(path.read_bytes(), as_batch)


def _name_hints_time(name: str) -> bool:
    return any(h in name.lower() for h in TIMESTAMP_HINTS) or name.lower().endswith(("_at", "_ts"))


def _epoch_millis(name: str, values: Any, fmt: str) -> bool:
    """jsonl only: integers named like a time, in the range of epoch milliseconds (1973 to 2286), as
    pandas' ``to_json`` writes timestamps (ingestion reads them so)."""
    values = values.dropna()
    return (
        fmt == "jsonl"
        and _name_hints_time(name)
        and not values.empty
        and bool(((values > 1e11) & (values < 1e13)).all())
    )


def _timestamp_verdict(name: str, values: Any) -> tuple[bool, str]:
    """Whether an object column holds timestamps: every value parses as ISO 8601, as ingestion parses
    them (and, without a name hint, the values look like dates). Returns (verdict, note)."""
    import pandas as pd

    values = values.dropna()
    if values.empty or not all(isinstance(v, str) for v in values):
        return False, ""
    parsed = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
    share = float(parsed.notna().mean())
    hinted = _name_hints_time(name)
    looks = values.str.contains(r"^\d{4}-\d{2}-\d{2}", regex=True).mean() >= 0.99
    if share == 1.0 and (hinted or looks):
        return True, ""
    if share >= 0.9 and (hinted or looks):
        bad = values[parsed.isna()]
        return False, (
            f"{name} looks like a timestamp, but {len(bad)} of {len(values)} values do not parse as "
            f"ISO 8601 (e.g. {bad.iloc[0]!r}); typed string: clean them upstream, then declare it one"
        )
    return False, ""


def _infer_schema(df: Any, fmt: str) -> tuple[dict[str, str], list[str], list[str]]:
    """(column -> declared type, timestamp columns, notes) of a sample of format ``fmt``."""
    from pandas.api import types as pt

    columns: dict[str, str] = {}
    timestamps, notes = [], []
    for c in df.columns:
        s = df[c]
        if pt.is_bool_dtype(s):
            columns[c] = "bool"
        elif pt.is_integer_dtype(s):
            columns[c] = "timestamp" if _epoch_millis(c, s, fmt) else "int"
        elif pt.is_float_dtype(s):
            columns[c] = "float"
        elif pt.is_datetime64_any_dtype(s):
            columns[c] = "timestamp"
        else:
            is_ts, note = _timestamp_verdict(c, s)
            columns[c] = "timestamp" if is_ts else "string"
            notes += [note] if note else []
        if columns[c] == "timestamp":
            timestamps.append(c)
    return columns, timestamps, notes


def _parse_timestamps(df: Any, timestamps: list[str]) -> Any:
    import pandas as pd

    df = df.copy()
    for c in timestamps:
        if pd.api.types.is_integer_dtype(df[c]):
            df[c] = pd.to_datetime(df[c], unit="ms", utc=True).dt.tz_localize(None)
        elif not pd.api.types.is_datetime64_any_dtype(df[c]):
            df[c] = pd.to_datetime(df[c], utc=True, format="ISO8601").dt.tz_localize(None)
        elif df[c].dt.tz is not None:
            df[c] = df[c].dt.tz_convert("UTC").dt.tz_localize(None)
    return df


def _correlation(x: Any, y: Any, method: str = "pearson") -> float | None:
    ok = x.notna() & y.notna()
    if ok.sum() < 10 or x[ok].nunique() < 2 or y[ok].nunique() < 2:
        return None
    return float(x[ok].corr(y[ok], method=method))


def _separation(x: Any, label: Any) -> float | None:
    """How well ``x`` alone orders the label: its ROC AUC folded to [0.5, 1] (1: it separates perfectly)."""
    ok = x.notna() & label.notna()
    positives = label[ok] == 1
    n1, n0 = int(positives.sum()), int((~positives).sum())
    if n1 < 5 or n0 < 5:
        return None
    ranks = x[ok].rank()
    auc = (float(ranks[positives].sum()) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return max(auc, 1 - auc)


def _missing_with_target(x: Any, y: Any, target: str) -> str | None:
    """A column missing (nearly) only where the target is, and on most of those rows, is likely recorded
    together with the outcome (e.g. times of an event that did not happen)."""
    both = int((x.isna() & y.isna()).sum())
    if x.isna().sum() < 3 or both < 0.95 * x.isna().sum() or both < 0.5 * y.isna().sum():
        return None
    return f"missing where {target} is missing ({both} of its {int(y.isna().sum())} missing rows)"


def _leak_reason(x: Any, y: Any, target: str, label: Any) -> str | None:
    """Why a column looks derived from the outcome, or None."""
    why = _missing_with_target(x, y, target)
    if why or x.dtype == object or str(x.dtype).startswith("datetime"):
        return why
    x = x.astype("float64")
    for method, sign in (("pearson", "r"), ("spearman", "rank r")):
        r = _correlation(x, y, method)
        if r is not None and abs(r) > LEAKAGE_CORRELATION:
            return f"|{sign}| = {abs(r):.3f} with {target}"
    auc = _separation(x, label) if label is not None else None
    if auc is not None and auc >= 0.99:
        return f"it alone separates the label (ROC AUC {auc:.3f})"
    return None


def _sum_leaks(df: Any, numeric: list[str], y: Any, target: str) -> dict[str, str]:
    """Pairs of columns whose sum or difference equals the target on (nearly) every row."""
    import itertools

    import numpy as np

    out: dict[str, str] = {}
    varying = [c for c in numeric if df[c].nunique(dropna=True) > 1]
    rows = df[varying].astype("float64").head(5000)
    t = y.head(5000).to_numpy(float)
    tol = 1e-6 * max(float(np.nanmax(np.abs(t))) if np.isfinite(t).any() else 1.0, 1.0)
    for a, b in itertools.combinations(varying, 2):
        xa, xb = rows[a].to_numpy(), rows[b].to_numpy()
        for label, value in ((f"{a} + {b}", xa + xb), (f"{a} - {b}", xa - xb), (f"{b} - {a}", xb - xa)):
            ok = np.isfinite(value) & np.isfinite(t)
            if ok.sum() >= 10 and np.mean(np.abs(value[ok] - t[ok]) <= tol) >= 0.99:
                for c in (a, b):
                    out.setdefault(c, f"{label} equals {target}")
    return out


def _flag_leakage(df: Any, columns: dict[str, str], target: str, label: Any) -> dict[str, str]:
    """Columns that likely leak the outcome, with the reason: the target's name in theirs, missing where
    the target is missing, |r| (or rank r) above :data:`LEAKAGE_CORRELATION` with the target, a label it
    alone separates, or a sum or difference of two columns equal to the target."""
    import pandas as pd

    flagged = {
        c: f"its name contains the target's name {target!r}"
        for c in columns
        if c != target and target.lower() in c.lower()
    }
    y = pd.to_numeric(df[target], errors="coerce").astype("float64")
    for c, ty in columns.items():
        why = (
            None
            if c in flagged or c == target
            else _leak_reason(df[c] if ty != "bool" else df[c].astype(float), y, target, label)
        )
        if why:
            flagged[c] = why
    # pairs among all numeric columns: a flagged column's partner in a sum is a leak as well
    numeric = [c for c, ty in columns.items() if ty in ("int", "float") and c != target]
    for c, why in _sum_leaks(df, numeric, y, target).items():
        flagged.setdefault(c, why)
    return flagged


def _feature_entries(
    columns: dict[str, str], timestamps: list[str], excluded: set[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Vocabulary entries for every column not excluded: numbers as they are, text and booleans
    categorical, timestamps their day of week and hour. Returns (entries, notes)."""
    entries: list[dict[str, Any]] = []
    notes: list[str] = []
    for c, ty in columns.items():
        if c in excluded:
            continue
        if c in timestamps:
            made = [
                {"name": f"{c}_{part}", "transform": "date_part", "column": c, "part": part}
                for part in ("dayofweek", "hour")
            ]
        elif ty in ("int", "float"):
            made = [{"name": c}]
        else:
            made = [{"name": c, "transform": "categorical"}]
        for entry in made:
            if any(e["name"] == entry["name"] for e in entries):
                notes.append(f"feature {entry['name']!r} of {c} left out: another feature has that name")
            else:
                entries.append(entry)
    return entries, notes


def _nice(x: float, up: bool) -> float:
    """``x`` rounded outward (up or down) to two significant digits of its magnitude."""
    import math

    if x == 0 or not math.isfinite(x):
        return x
    step = 10 ** (math.floor(math.log10(abs(x))) - 1)
    n = math.ceil(x / step) if up else math.floor(x / step)
    return round(n * step, max(0, -math.floor(math.log10(step))))


def _range_expectation(c: str, s: Any, ty: str) -> dict[str, Any] | None:
    import math

    values = s.dropna().astype("float64")
    if values.empty:
        return None
    lo, hi = float(values.min()), float(values.max())
    margin = (hi - lo) * 0.1 or max(abs(hi) * 0.1, 1.0)
    low, high = _nice(lo - margin, up=False), _nice(hi + margin, up=True)
    why = f"the sample's range [{lo:g}, {hi:g}] widened by a margin"
    if lo >= 0 > low:
        low, why = 0.0, why + " (not below 0: the sample has no negative value)"
    if ty == "int":
        low, high = math.floor(low), math.ceil(high)
    return {
        "type": "expect_column_values_to_be_between",
        "kwargs": {"column": c, "min_value": low, "max_value": high},
        "meta": {"why": why},
    }


def _column_expectations(c: str, s: Any, ty: str) -> list[dict[str, Any]]:
    """Starter checks of one column the sample passes: nulls, a range, a value set."""
    import math

    exps: list[dict[str, Any]] = []
    present = float(s.notna().mean())
    if present == 1.0:
        exps.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": c}})
    elif present - NULL_MARGIN > 0:
        mostly = math.floor((present - NULL_MARGIN) * 100) / 100
        exps.append(
            {
                "type": "expect_column_values_to_not_be_null",
                "kwargs": {"column": c, "mostly": mostly},
                "meta": {"why": f"{present:.1%} of the sample's values are present"},
            }
        )
    if ty in ("int", "float"):
        exps += [e for e in [_range_expectation(c, s, ty)] if e]
    values = s.dropna().unique().tolist()
    if (
        ty == "string"
        and values
        and all(isinstance(v, str) for v in values)
        and len(values) <= MAX_VALUE_SET
        and len(values) <= 0.5 * s.notna().sum()
    ):
        exps.append(
            {
                "type": "expect_column_values_to_be_in_set",
                "kwargs": {"column": c, "value_set": sorted(values)},
                "meta": {"why": "the values seen in the sample; a new one needs a look before it is trained on"},
            }
        )
    return exps


def _suite_text(name: str, df: Any, columns: dict[str, str], sample: Path) -> str:
    """A GX 1.x suite JSON of starter checks, one expectation per line."""
    exps = [e for c, ty in columns.items() for e in _column_expectations(c, df[c], ty)]
    notes = (
        f"Starter data checks written by `airloop model init` from {sample.name} ({len(df)} rows): null shares, "
        "ranges widened by a margin, value sets of few-valued text columns. Tighten them with what you know. "
        "Column presence, types and the minimum row count are generated from the pipeline config's schema."
    )
    body = ",\n".join("    " + json.dumps(e) for e in exps)
    return (
        f'{{\n  "name": {json.dumps(name)},\n  "meta": {{"notes": {json.dumps(notes)}}},\n'
        f'  "expectations": [\n{body}\n  ]\n}}\n'
    )


class _Flow(dict):  # type: ignore[type-arg]
    """A mapping written on one line ({name: x, transform: y})."""


class _FlowList(list):  # type: ignore[type-arg]
    """A list written on one line ([a, b])."""


def _yaml_dump(doc: dict[str, Any]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))
    Dumper.add_representer(_FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
    return yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=110, allow_unicode=True)


def _task_for(args: argparse.Namespace, y: Any, is_bool: bool) -> tuple[str, float | None, str]:
    """(task type, positive_above, task.target) from the options and the sample's target values."""
    values = set(y.dropna().unique().tolist())
    zero_one = is_bool or values <= {0, 1}
    task = args.task or ("binary_classification" if zero_one or args.positive_above is not None else "regression")
    if len(values) < 2:
        raise UsageError(
            f"the sample's target {args.target!r} has {len(values)} distinct value(s); a model needs "
            "a sample whose target varies"
        )
    if task == "regression":
        if args.positive_above is not None:
            raise UsageError("--positive-above is only for --task binary_classification (label = target > X)")
        return task, None, args.target
    above = args.positive_above if args.positive_above is not None else (0.5 if zero_one else None)
    if above is None:
        raise UsageError(f"binary_classification needs --positive-above X: the label is {args.target} > X")
    label = y > above
    if label[y.notna()].nunique() < 2:
        raise UsageError(
            f"{args.target} > {above:g} is the same for every row of the sample; choose another "
            "--positive-above, or a sample with both outcomes"
        )
    suffix = f"{above:g}".replace("-", "minus").replace(".", "_")
    return task, float(above), args.target if zero_one else f"{args.target}_above_{suffix}"


def _gate_for(task: str, y: Any) -> dict[str, Any]:
    if task == "regression":
        std = float(y.std())
        return {"metric": "rmse", "min_metric": _nice(2 * std, up=True), "max_regression": _nice(0.02 * std, up=True)}
    return {"metric": "roc_auc", "min_metric": 0.55, "max_regression": 0.01}


def _config_doc(
    args: argparse.Namespace,
    sample: Any,
    columns: dict[str, str],
    timestamps: list[str],
    flagged: dict[str, str],
    features: list[dict[str, Any]],
    task: tuple[str, float | None, str],
) -> dict[str, Any]:
    """The pipeline config of a new model, as a mapping in the order a person reads it."""
    kind, above, target_name = task
    fmt = _sample_format(args.sample)
    event_time = timestamps[0] if timestamps else None
    start = sample[event_time].min().date() if event_time and sample[event_time].notna().any() else dt.date.today()
    label: dict[str, Any] = {"source_column": args.target}
    if above is not None:
        label["positive_above"] = above
    what = f"{args.target} > {above:g}" if above is not None else args.target
    schema: dict[str, Any] = {"columns": columns}
    if timestamps:
        schema |= {"timestamp_columns": _FlowList(timestamps), "event_time": event_time}
    schema["leakage_columns"] = _FlowList([args.target, *flagged])
    return {
        "name": args.name,
        "description": f"Predicts {what} ({kind.replace('_', ' ')}); written by `airloop model init` from "
        f"{args.sample.name}: describe the model here.",
        "owner": "airloop",
        "tags": _FlowList(["generated", kind.replace("_", "-")]),
        "task": {"type": kind, "target": target_name, "label": label},
        "source": {"kind": "files", "format": fmt, "file_name": f"batch.{fmt}"},
        "schedule": {"cron": "@daily", "start_date": start, "catchup": False},
        "schema": schema,
        "validation": {"suite": f"{args.name}.json", "min_rows": 1},
        "features": {"columns": [_Flow(f) for f in features]},
        "gate": _gate_for(kind, _numeric_target(sample, args.target)),
    }


def _numeric_target(df: Any, target: str) -> Any:
    import pandas as pd

    return pd.to_numeric(df[target], errors="coerce").astype("float64")


def _config_header(args: argparse.Namespace, rows: int, flagged: dict[str, str]) -> str:
    lines = [
        f"# Written by `airloop model init` from {args.sample.name} ({rows} rows): a starting point to review.",
        "# Every setting not written here has its default (see include/airloop/config.py).",
    ]
    if flagged:
        lines.append("# Flagged as likely leakage (known only with the outcome), so left out of the features: confirm,")
        lines.append("# or move a column back into features and out of schema.leakage_columns:")
        lines += [f"#   {c}: {why}" for c, why in flagged.items()]
    return "\n".join(lines) + "\n"


def _check_target(df: Any, columns: dict[str, str], target: str) -> None:
    if target not in columns:
        raise UsageError(f"--target {target!r} is not a column of the sample; its columns: {list(columns)}")
    if columns[target] not in ("int", "float", "bool"):
        example = df[target].dropna().iloc[0] if df[target].notna().any() else None
        raise UsageError(
            f"--target {target!r} is {columns[target]} (e.g. {example!r}); the label source must be a "
            "number (or 0/1, true/false): convert it upstream or choose a numeric column"
        )


def _write_model_files(folder: Path, name: str, yaml_text: str, suite_text: str, sample: Path) -> Any:
    """Write both files through a temporary folder, load the config and compute the sample's features
    there, then move them into place: a config that does not load is never left behind."""
    import shutil
    import tempfile

    from airloop.config import load_pipeline_config
    from airloop.features import compute_features

    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder))
    try:
        (tmp / f"{name}.yaml").write_text(yaml_text)
        (tmp / f"{name}.json").write_text(suite_text)
        cfg = load_pipeline_config(tmp / f"{name}.yaml")
        batch = _read_sample_as_batch(cfg, sample)
        _check_declared_types(cfg, batch)
        compute_features(batch, cfg.features, search_dirs=cfg.feature_search_dirs)
        for suffix in (".json", ".yaml"):
            os.replace(tmp / f"{name}{suffix}", folder / f"{name}{suffix}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_pipeline_config(folder / f"{name}.yaml")


def _check_declared_types(cfg: Any, batch: Any) -> None:
    """Raise ValueError when ingestion would store a column with another type than the schema declares
    (the gate's type check would then refuse every batch like the sample)."""
    from airloop.validation import TYPE_LISTS

    wrong = {
        c: str(batch[c].dtype) for c, ty in cfg.data_schema.columns.items() if str(batch[c].dtype) not in TYPE_LISTS[ty]
    }
    if wrong:
        raise ValueError(f"ingestion reads these columns of the sample with other types than inferred: {wrong}")


def cmd_model_init(args: argparse.Namespace) -> int:
    """Write ``<dir>/NAME.yaml`` and a starter suite ``<dir>/NAME.json`` from a sample batch."""
    from airloop.config import _NAME_RE, pipelines_dir
    from airloop.errors import ConfigError
    from airloop.features import label as make_label

    folder = Path(args.pipelines_dir) if args.pipelines_dir else pipelines_dir()
    try:
        if not _NAME_RE.match(args.name):
            raise UsageError(
                f"model name {args.name!r} must be lower_snake_case (it becomes part of DAG ids and paths)"
            )
        existing = [p for p in (folder / f"{args.name}.yaml", folder / f"{args.name}.json") if p.exists()]
        if existing and not args.force:
            raise UsageError(f"{', '.join(map(str, existing))} already exist(s); pass --force to overwrite")
        raw = _read_sample(args.sample)
        columns, timestamps, notes = _infer_schema(raw, _sample_format(args.sample))
        _check_target(raw, columns, args.target)
        sample = _parse_timestamps(raw, timestamps)
        y = _numeric_target(sample, args.target)
        task = _task_for(args, y, columns[args.target] == "bool")
        label = make_label(sample, args.target, task[1]) if task[1] is not None else None
        flagged = _flag_leakage(sample, columns, args.target, label)
        features, more = _feature_entries(columns, timestamps, {args.target, *flagged})
        if not features:
            raise UsageError(f"every column of {args.sample} is the target or flagged as leakage; no features are left")
    except UsageError as e:
        print(f"airloop: {e}", file=sys.stderr)
        return 2
    doc = _config_doc(args, sample, columns, timestamps, flagged, features, task)
    yaml_text = _config_header(args, len(sample), flagged) + _yaml_dump(doc)
    try:
        cfg = _write_model_files(
            folder, args.name, yaml_text, _suite_text(args.name, sample, columns, args.sample), args.sample
        )
    except (ConfigError, ValueError) as e:
        print(
            f"airloop: the config written from {args.sample} does not work, so nothing was written: {e}",
            file=sys.stderr,
        )
        return 1
    _print_init_report(args, cfg, folder, flagged, notes + more)
    return 0


def _print_init_report(
    args: argparse.Namespace, cfg: Any, folder: Path, flagged: dict[str, str], notes: list[str]
) -> None:
    from airloop.config import pipelines_dir
    from airloop.features import categorical_features, numeric_features

    print(f"wrote {folder / (cfg.name + '.yaml')} and {cfg.suite_path}")
    print(
        f"  task {cfg.task.type}: label from {cfg.task.label.source_column}; gate {cfg.gate.metric} "
        f"{'>=' if cfg.gate.metric == 'roc_auc' else '<='} {cfg.gate.min_metric}"
    )
    print(
        f"  {len(cfg.data_schema.columns)} columns; event time {cfg.event_time or 'none (no timestamp column)'}; "
        f"{len(numeric_features(cfg.features))} numeric and {len(categorical_features(cfg.features))} "
        "categorical features"
    )
    if flagged:
        print("  flagged: confirm or move back to features:")
        for c, why in flagged.items():
            print(f"    {c}: {why}")
    for note in notes:
        print(f"  note: {note}")
    s = _settings(args)
    sample = args.sample
    print("Next steps:")
    print(f"  1. review {cfg.name}.yaml (features, schema.leakage_columns, gate) and {cfg.name}.json (ranges, sets)")
    print(
        f"  2. airloop model check {cfg.name} --sample {sample}"
        + (f" --pipelines-dir {folder}" if args.pipelines_dir else "")
    )
    print(f"  3. land batches: one {cfg.source.format} file per day at {_landing_pattern(s, cfg)}")
    if folder.resolve() != pipelines_dir().resolve():
        print(f"     (the stack reads configs from {pipelines_dir()}: export AIRLOOP_PIPELINES_DIR={folder} first)")
    print(
        "  4. restart the stack so Airflow and a model server pick the model up (airloop stack stop; airloop stack "
        f"start), unpause {cfg.dag_id('ingest')} and trigger it: `airloop airflow dags unpause "
        f"{cfg.dag_id('ingest')}`, then `airloop airflow dags trigger {cfg.dag_id('ingest')} -c "
        '\'{"source_uri": "<a landed file>"}\'` (training starts once training.min_partitions days are in)'
    )


def cmd_model_check(args: argparse.Namespace) -> int:
    """Load a model's config and suite; with a sample, validate it and compute its features."""
    from airloop.config import get_pipeline
    from airloop.errors import AirloopError, ConfigError
    from airloop.features import feature_columns
    from airloop.validation import load_suite_dict

    try:
        cfg = get_pipeline(args.name, args.pipelines_dir)
        suite = load_suite_dict(cfg)
    except (ConfigError, ValueError) as e:
        print(f"airloop: {e}", file=sys.stderr)
        return 1
    print(f"{cfg.name}: config OK ({cfg.folder / (cfg.name + '.yaml')})")
    print(f"  task {cfg.task.type} on {cfg.task.label.source_column}; gate {cfg.gate.metric} {cfg.gate.min_metric}")
    print(f"  a request carries {cfg.request_columns}")
    print(f"  features: {feature_columns(cfg.features)}")
    print(f"  suite {cfg.suite_path}: {len(suite['expectations'])} expectations, plus the schema's checks")
    print(f"  model server connection: {cfg.model_server_conn_id}")
    if args.sample is None:
        return 0
    try:
        df = _read_sample_as_batch(cfg, args.sample)
    except UsageError as e:
        print(f"airloop: {e}", file=sys.stderr)
        return 2
    except AirloopError as e:
        print(f"airloop: sample {args.sample}: {e}", file=sys.stderr)
        return 1
    return 0 if _check_sample(cfg, df, args.sample) else 1


def _check_sample(cfg: Any, df: Any, sample: Path) -> bool:
    """Validate a sample against the model's suite and compute its features; print what was found."""
    from airloop.features import compute_features, label
    from airloop.validation import validate_frame

    outcome = validate_frame(cfg, df)
    evaluated = outcome.statistics.get("evaluated_expectations", len(outcome.expectations))
    if outcome.success:
        print(f"sample {sample} ({len(df)} rows): passes the suite ({evaluated} expectations)")
    else:
        print(f"sample {sample} ({len(df)} rows): {len(outcome.failures)} of {evaluated} expectations FAILED:")
        for f in outcome.failures:
            print(f"  FAILED {f.describe()}")
    try:
        keep = [cfg.event_time] if cfg.event_time else []
        features = compute_features(df, cfg.features, keep=keep, search_dirs=cfg.feature_search_dirs)
    except ValueError as e:
        print(f"features FAILED on {sample}: {e}")
        return False
    names = [c for c in features.columns if c not in keep]
    empty = [c for c in names if features[c].isna().all()]
    y = label(df, cfg.task.label.source_column, cfg.task.label.positive_above)
    print(f"features: {len(features)} rows x {len(names)} features" + (f"; all null: {empty}" if empty else ""))
    print(
        f"labels: {int(y.notna().sum())} known"
        + (f", {float(y.mean()):.1%} positive" if cfg.task.label.positive_above is not None else "")
    )
    return outcome.success


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="airloop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--state-dir", help="local state folder (default: $AIRLOOP_HOME or <checkout>/.airloop)")
    sub = p.add_subparsers(dest="command", required=True)

    def stack_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--port",
            type=int,
            help="loopback port of the API server and UI (default 8080; port+1 to port+3 "
            "are the log servers and MLflow, port+4 on one model server per model)",
        )
        sp.add_argument(
            "--database-url", help="SQLAlchemy URL of the metadata database (default: SQLite in the state folder)"
        )

    sp = sub.add_parser("demo", help="set up everything and run the main job on the embedded defaults")
    stack_opts(sp)
    sp.add_argument("--days", type=int, default=21, help="real days to replay (one broken day follows them)")
    sp.add_argument("--timeout", type=float, default=1200, help="seconds to wait for the runs")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("init", help="prepare the Airflow home, migrate the database, apply airflow_settings.yaml")
    stack_opts(sp)
    sp.set_defaults(func=cmd_init)

    sp = sub.add_parser("settings", help="apply airflow_settings.yaml (connections, pools, variables) idempotently")
    sp.add_argument("action", choices=["apply"])
    sp.add_argument("--file", type=Path, default=Path(stack._repo_root() / "airflow_settings.yaml"))
    sp.set_defaults(func=cmd_settings_apply)

    sp = sub.add_parser("stack", help="start, stop or inspect the local Airflow stack")
    sp.add_argument("action", choices=["start", "stop", "status"])
    stack_opts(sp)
    sp.set_defaults(func=cmd_stack)

    sp = sub.add_parser("replay", help="land days of real nycflights13 flights as daily batches")
    sp.add_argument("--model", default=DEMO_MODEL, help=f"a model whose source.kind is replay (default {DEMO_MODEL})")
    sp.add_argument(
        "--start",
        type=dt.date.fromisoformat,
        default=DEMO_START,
        help=f"the first day, YYYY-MM-DD (default {DEMO_START})",
    )
    sp.add_argument("--days", type=int, default=7, help="how many days from --start (default 7)")
    sp.add_argument(
        "--corrupt",
        action="append",
        metavar="DATE:KIND",
        help="break one day on purpose: null_column, missing_column, out_of_range, wrong_types, empty_file, not_csv",
    )
    sp.set_defaults(func=cmd_replay)

    sp = sub.add_parser("quarantine", help="list, inspect, release or reject quarantined batches")
    qsub = sp.add_subparsers(dest="action", required=True)
    q = qsub.add_parser("list", help="batches in quarantine")
    q.add_argument("--model")
    q.add_argument("--all", action="store_true", help="include released, rejected and superseded batches")
    for name, helptext in (
        ("show", "one batch as JSON"),
        ("release", "re-validate and publish (runs <model>__release)"),
        ("reject", "give up on a batch; it is kept, never trained on"),
    ):
        q = qsub.add_parser(name, help=helptext)
        q.add_argument("model")
        q.add_argument("partition", help="e.g. ds=2013-01-08 (or just 2013-01-08)")
        if name == "reject":
            q.add_argument("--reason", required=True)
        if name == "release":
            q.add_argument("--wait", action="store_true", help="wait for the release run and exit non-zero if it fails")
    sp.set_defaults(func=cmd_quarantine)

    sp = sub.add_parser("models", help="alias history and manual rollback of a registered model")
    msub = sp.add_subparsers(dest="action", required=True)
    m = msub.add_parser("history", help="every alias change: who, when, why, which version it replaced")
    m.add_argument("model")
    m = msub.add_parser("rollback", help="make an earlier version champion at once")
    m.add_argument("model")
    m.add_argument("version")
    m.add_argument("--reason", required=True)
    sp.set_defaults(func=cmd_models)

    sp = sub.add_parser("model", help="write a new model's config and starter suite from a sample, or check one")
    msub = sp.add_subparsers(dest="action", required=True)
    m = msub.add_parser("init", help="write <dir>/NAME.yaml and a starter suite <dir>/NAME.json from a sample batch")
    m.add_argument("name", help="the model's name, lower_snake_case (DAG ids and paths are made from it)")
    m.add_argument(
        "--sample",
        type=Path,
        required=True,
        help="a representative batch: .csv, .parquet or .jsonl (types, ranges and leakage come from it)",
    )
    m.add_argument("--target", required=True, help="the column the model predicts (its label source; numeric)")
    m.add_argument(
        "--task",
        choices=["regression", "binary_classification"],
        help="default: binary_classification for a 0/1 or true/false target or with --positive-above, else regression",
    )
    m.add_argument(
        "--positive-above",
        type=float,
        metavar="X",
        help="binary_classification: the label is target > X (default 0.5 for a 0/1 target)",
    )
    m.add_argument(
        "--pipelines-dir",
        type=Path,
        help="where to write (default: $AIRLOOP_PIPELINES_DIR or the package's pipelines folder)",
    )
    m.add_argument("--force", action="store_true", help="overwrite NAME.yaml and NAME.json if they exist")
    m.set_defaults(func=cmd_model_init)
    m = msub.add_parser(
        "check", help="load a model's config and suite; with --sample, validate it and compute features"
    )
    m.add_argument("name", help="the model's name (its YAML's file name)")
    m.add_argument("--sample", type=Path, help="a batch (.csv, .parquet or .jsonl) to validate and compute features on")
    m.add_argument(
        "--pipelines-dir",
        type=Path,
        help="where the config is (default: $AIRLOOP_PIPELINES_DIR or the package's pipelines folder)",
    )
    m.set_defaults(func=cmd_model_check)

    sp = sub.add_parser("drift", help="the drift history of a model (one line per checked interval)")
    sp.add_argument("action", choices=["history"])
    sp.add_argument("model")
    sp.add_argument("--json", action="store_true", help="one JSON object per line, every figure")
    sp.set_defaults(func=cmd_drift)

    sp = sub.add_parser("webhook", help="send a signed 'batch landed' delivery to the local stack's webhook route")
    wsub = sp.add_subparsers(dest="action", required=True)
    w = wsub.add_parser("send", help="sign with the stack's secret for SOURCE and POST it; prints the run id")
    w.add_argument("source", help="webhook source name (webhooks: in the pipeline config)")
    w.add_argument("--day", required=True, help="the data interval, YYYY-MM-DD")
    w.add_argument("--uri", help="where the batch lies (default: the model's landing file of that day)")
    w.add_argument("--id", help="delivery id (default: a new one; repeat one to see idempotency)")
    sp.set_defaults(func=cmd_webhook)

    sp = sub.add_parser("run", help="start a DAG's run for an explicit data interval (works on SQLite too)")
    sp.add_argument("dag_id", help="e.g. <model>__drift or <model>__ingest")
    sp.add_argument("--start", required=True, help="the interval's first day, YYYY-MM-DD")
    sp.add_argument("--days", type=int, default=1, help="the interval's length in days (default 1)")
    sp.add_argument("--conf", help="the run conf, a JSON object")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("traffic", help="send each row of a file to a model's server as a scoring request")
    sp.add_argument("model", help="the model (its config names the request columns, key and event time)")
    sp.add_argument("file", help="rows in the model's schema: .csv, .parquet or .jsonl")
    sp.add_argument("--url", help="the server (default: the local stack's server of this model)")
    sp.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    sp.set_defaults(func=cmd_traffic)

    sp = sub.add_parser("alerts", help="the on-call alerts of failed tasks, with log URL and runbook")
    sp.add_argument("model", nargs="?", help="one model (default: all)")
    sp.add_argument("--last", type=int, default=20, help="how many, newest last")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_alerts)

    sp = sub.add_parser("airflow", help="run an Airflow CLI command against the local stack")
    sp.add_argument("args", nargs=argparse.REMAINDER)
    sp.set_defaults(func=cmd_airflow)

    sp = sub.add_parser("env", help="print the environment that points the Airflow CLI at the local stack")
    sp.set_defaults(func=cmd_env)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from airloop.errors import AirloopError

    try:
        return int(args.func(args) or 0)
    except (AirloopError, stack.StackError) as e:
        print(f"airloop: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
