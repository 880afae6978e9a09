"""``airloop``: the project's command line.

    airloop demo                      set up, replay real flights, run them through the real scheduler
    airloop init | settings apply     prepare the Airflow home / apply airflow_settings.yaml
    airloop stack start|stop|status   the local Airflow (API server + UI, scheduler, DAG processor, triggerer)
    airloop replay                    land days of nycflights13 in the landing area
    airloop quarantine list|show|release|reject
    airloop webhook send SOURCE       send a signed "batch landed" delivery to the stack's webhook route
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

from airloop_airflow import stack

DEMO_MODEL = "flight_delays"
SUMMER_START = dt.date(2013, 7, 1)
DEMO_START = dt.date(2013, 1, 1)


def _settings(args: argparse.Namespace) -> stack.StackSettings:
    from airloop.storage import state_dir

    return stack.StackSettings.load(
        args.state_dir or state_dir(), port=getattr(args, "port", None), database_url=getattr(args, "database_url", None)
    )


def _use_stack_env(s: stack.StackSettings) -> None:
    """Make domain calls in this process see the same data root as the stack's tasks."""
    os.environ["AIRLOOP_HOME"] = s.state_dir
    os.environ["AIRLOOP_DATA_ROOT"] = s.data_root


def _api(s: stack.StackSettings) -> Any:
    from airloop_airflow.api_client import AirflowApi

    password = stack.admin_password(s)
    if not password or not stack.health(s):
        raise stack.StackError(f"the local stack is not running at {s.base_url}; start it with `airloop stack start`")
    return AirflowApi(s.base_url, "admin", password)


def _print_login(s: stack.StackSettings) -> None:
    print(f"\nAirflow UI:  {s.base_url}   (user: admin, password: {stack.admin_password(s) or '<created on first start>'})")
    print(f"             the password is kept in {s.airflow_home / 'simple_auth_manager_passwords.json.generated'}")
    print(f"MLflow UI:   {s.mlflow_url}   (models, runs, lineage tags)")
    print(f"Model:       {s.model_server_url}/invocations   (MLflow scoring protocol; /version, /metrics)")
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
        stack.start(s)
        print(f"Local stack healthy in {time.monotonic() - t:.1f} s")
        _print_login(s)
    elif args.action == "stop":
        stopped = stack.stop(s)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    else:
        running = stack.running_components(s)
        h = stack.health(s)
        for c in stack.COMPONENTS:
            print(f"{c:14s} {f'running (pid {running[c]})' if c in running else 'stopped'}")
        print(f"health: {json.dumps(h) if h else 'API server not reachable at ' + s.base_url}")
        if running:
            _print_login(s)
        return 0 if h else 1
    return 0


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
    days = [args.start + dt.timedelta(days=i) for i in range(args.days)]
    uris = nycflights13.replay_days(
        DataRoot(s.data_root), cfg.name, days, file_name=cfg.source.file_name, corruptions=_parse_corruptions(args.corrupt)
    )
    print(f"landed {len(uris)} daily batches: {uris[0]} .. {uris[-1]}")
    return 0


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
        records = registry.rollback(client, root, args.model, args.version, by=f"cli/{os.environ.get('USER', 'unknown')}",
                                    why=args.reason)
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
        print(f"{r['interval_start'][:10]} .. {r['interval_end'][:10]}  v{r['champion_version']:<3} {verdict:5s} "
              f"share {r['drift_share']:.2f}  prediction {r['prediction_score']}  rows {r['current_rows']}  "
              f"drifted {r['drifted_columns']}")
    print(f"trend plot: {root.uri}/reports/{args.model}/drift/trend.html")
    return 0


def send_webhook(s: stack.StackSettings, source_name: str, day: dt.date, uri: str | None = None,
                 delivery_id: str | None = None, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
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
    uri = uri or f"{s.data_root}/landing/{cfg.name}/ds={day.isoformat()}/{cfg.source.file_name}"
    body = json.dumps({"source_uri": uri, "day": day.isoformat()}).encode()
    headers = wh.signed_headers(source.scheme, s.webhook_secret(source.connection_id),
                                delivery_id or f"msg_{uuid.uuid4().hex}", body)
    req = urllib.request.Request(f"{s.base_url}/airloop/webhooks/{source_name}", data=body, method="POST",
                                 headers={**headers, "Content-Type": "application/json"})
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


def cmd_alerts(args: argparse.Namespace) -> int:
    """Print the on-call alerts of a model (``reports/<model>/alerts.jsonl``), newest last."""
    from airloop.alerts import read_alerts
    from airloop.config import load_all_pipelines
    from airloop.storage import DataRoot

    s = _settings(args)
    root = DataRoot(s.data_root)
    models = [args.model] if args.model else [c.name for c in load_all_pipelines()]
    alerts = [a for m in models for a in read_alerts(root, m)][-args.last:]
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


def _wait_runs(api: Any, dag_id: str, run_ids: set[str] | None, timeout_s: float, expect: int | None = None) -> dict[str, str]:
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
    print(f"\nMLflow model {model}: {len(versions)} version(s); aliases {aliases or 'none'}  ({s.mlflow_url}/#/models/{model})")
    return aliases


def _traffic(days: list[dt.date]) -> list[tuple[str, bytes, str | None]]:
    """One scoring request per real flight of ``days`` (with its event time)."""
    import pandas as pd

    from airloop.features import SOURCE_COLUMNS
    from airloop.serving import replay
    from airloop.sources import nycflights13

    rows = pd.concat([nycflights13.day_frame(d) for d in days], ignore_index=True)
    return list(replay.request_bodies(rows, SOURCE_COLUMNS))


def _replay_traffic(s: stack.StackSettings, days: list[dt.date]) -> dict[str, int]:
    """Send every flight of ``days`` once as a scoring request."""
    from airloop.serving import replay

    return dict(replay.replay(s.model_server_url, _traffic(days), concurrency=6))


def _canary_on_real_traffic(s: stack.StackSettings, api: Any, cfg: Any, days: list[dt.date], timeout_s: float) -> list[dict[str, Any]]:
    """Replay later real days as live scoring requests while the deploy DAG walks its canary steps.

    :returns: the rollouts that ran (their state files), oldest first
    """
    from airloop.serving import replay
    from airloop.storage import DataRoot

    bodies = _traffic(days)
    done = threading.Event()
    counts: dict[str, int] = {}
    sender = threading.Thread(target=lambda: counts.update(
        replay.replay(s.model_server_url, bodies, concurrency=4, loop=True, stop=done.is_set)), daemon=True)
    sender.start()
    try:
        _wait_idle(api, [cfg.dag_id("deploy")], timeout_s=timeout_s, settle_s=15.0)
    finally:
        done.set()
        sender.join(timeout=60)
    print(f"  traffic: {len(bodies)} real flights of {days[0]} .. {days[-1]} replayed as requests: "
          + json.dumps(dict(sorted(counts.items()))), flush=True)
    root = DataRoot(s.data_root)
    folder = f"{root.uri}/reports/{cfg.name}/canary"
    states = [root.read_json(f"{folder}/{name}") for name in root.list_names(folder) if name.endswith(".json")]
    for st in sorted(states, key=lambda x: x["started_at"]):
        print(f"  canary of v{st['version']} (champion was v{st['champion_version']}): {st['status']}")
        for d in st["decisions"]:
            f = d["figures"]
            print(f"    {d['percent']:>3}%: {d['action']:8s} {d['reason']}  [challenger {f['challenger_requests']:.0f} req, "
                  f"5xx {f['challenger_5xx_rate']:.2%}, p{100 * f.get('latency_quantile', 0.99):.4g} latency "
                  f"{f['p99_latency_s']}, PSI {f['prediction_psi']}, "
                  f"online metric {f['online_metric']}]")
    return states


def trigger_interval_run(api: Any, dag_id: str, day: dt.date, days: int = 1) -> str:
    """Start the run of one data interval of ``days`` days from ``day`` (idempotent: an existing run of
    that interval is reused).

    Backfills would do the same, but Airflow refuses to create them on SQLite while the scheduler runs;
    a run with an explicit data interval works on every metadata database.
    """
    from airloop_airflow.api_client import ApiError

    run_id = f"replay__{day.isoformat()}"
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    body = {
        "dag_run_id": run_id,
        "logical_date": start.isoformat(),
        "data_interval_start": start.isoformat(),
        "data_interval_end": (start + dt.timedelta(days=days)).isoformat(),
        "conf": {},
        "note": "replayed interval of nycflights13",
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
    print(f"[2/7] Landing {args.days} real days of flights from {days[0]}, and {bad_day} with a unit mix-up "
          "(distance in metres, an impossible month) that the gate must stop", flush=True)
    nycflights13.replay_days(DataRoot(s.data_root), cfg.name, days, file_name=cfg.source.file_name,
                             corruptions={bad_day: "out_of_range"})
    print(f"[3/7] Starting the local stack on {s.base_url}", flush=True)
    stack.start(s)
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
    print("[5/7] Features (Spark) and training (local process, MLflow) follow until a first champion serves",
          flush=True)
    _wait_idle(api, [cfg.dag_id("features"), cfg.dag_id("train"), cfg.dag_id("deploy")], timeout_s=args.timeout)
    root = DataRoot(s.data_root)
    summer = [SUMMER_START + dt.timedelta(days=i) for i in range(14)]
    week, later = summer[7:], [SUMMER_START + dt.timedelta(days=14 + i) for i in range(7)]
    print(f"[6/7] Summer: {summer[0]} .. {summer[-1]} lands and is ingested; the January champion scores the "
          f"flights of {week[0]} .. {week[-1]} (replayed with their event times); {cfg.dag_id('drift')} checks "
          "that week", flush=True)
    nycflights13.replay_days(root, cfg.name, summer, file_name=cfg.source.file_name)
    runs.update(_wait_runs(api, dag_id, {trigger_interval_run(api, dag_id, d) for d in summer}, timeout_s=args.timeout))
    _wait_idle(api, [cfg.dag_id("features"), cfg.dag_id("train")], timeout_s=args.timeout)
    counts = _replay_traffic(s, week)
    print(f"  traffic: {json.dumps(dict(sorted(counts.items())))}", flush=True)
    drift_run = trigger_interval_run(api, cfg.dag_id("drift"), week[0], days=7)
    drift_state = _wait_runs(api, cfg.dag_id("drift"), {drift_run}, timeout_s=args.timeout)[drift_run]
    args.action, args.model, args.json = "history", cfg.name, False
    cmd_drift(args)
    _wait_idle(api, [cfg.dag_id("train")], timeout_s=args.timeout, settle_s=10.0)
    retrains = [r for r in api.dag_runs(cfg.dag_id("train")) if r["dag_run_id"].startswith("drift__")]
    for r in retrains:
        ctx = (r.get("conf") or {}).get("drift") or {}
        print(f"  {cfg.dag_id('train')} run {r['dag_run_id']}: {r['state']} (conf reason=drift; drifted "
              f"{sorted(ctx.get('drifted_columns', {}))}, share {ctx.get('drift_share')}, prediction score "
              f"{ctx.get('prediction_score')})", flush=True)
    print(f"[7/7] {later[0]} .. {later[-1]} lands, announced by signed webhooks (outcomes for the online metric), and "
          "is replayed as live traffic "
          f"while {cfg.dag_id('deploy')} canaries the retrained challenger (steps {list(cfg.canary.steps)}%)", flush=True)
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
    print(f"\nIn the UI: Dags > {dag_id} shows the runs; in the failed run, task validate_batch > Details has "
          "the extra links 'Validation report' and 'Runbook'; Browse > Quarantine lists quarantined batches. "
          f"Dags > {cfg.dag_id('deploy')} shows the canary (watch_canary's log has each step's figures); the "
          f"train tasks link their MLflow run and model version; the last week's ingest runs came from webhooks; "
          f"`airloop models history {cfg.name}` prints the alias history.")
    _print_login(s)
    # Success means: every real day published, exactly the broken day stopped at the gate, a champion
    # serves, summer traffic was found drifting and retrained on, and the retrained model's canary was
    # decided on real traffic.
    decided = any(r["status"] in ("promoted", "rolled_back") for r in rollouts)
    drifted = drift_state == "success" and any(r["state"] == "success" for r in retrains)
    return 0 if (ok == args.days + 21 and failed == [f"replay__{bad_day.isoformat()}"] and "champion" in aliases
                 and drifted and decided) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="airloop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", help="local state folder (default: $AIRLOOP_HOME or <checkout>/.airloop)")
    sub = p.add_subparsers(dest="command", required=True)

    def stack_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--port", type=int, help="loopback port of the API server and UI (default 8080; also uses port+1, port+2)")
        sp.add_argument("--database-url", help="SQLAlchemy URL of the metadata database (default: SQLite in the state folder)")

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
    sp.add_argument("--model", default=DEMO_MODEL)
    sp.add_argument("--start", type=dt.date.fromisoformat, default=DEMO_START)
    sp.add_argument("--days", type=int, default=7)
    sp.add_argument("--corrupt", action="append", metavar="DATE:KIND",
                    help="break one day on purpose: null_column, missing_column, out_of_range, wrong_types, empty_file, not_csv")
    sp.set_defaults(func=cmd_replay)

    sp = sub.add_parser("quarantine", help="list, inspect, release or reject quarantined batches")
    qsub = sp.add_subparsers(dest="action", required=True)
    q = qsub.add_parser("list", help="batches in quarantine")
    q.add_argument("--model")
    q.add_argument("--all", action="store_true", help="include released, rejected and superseded batches")
    for name, helptext in (("show", "one batch as JSON"), ("release", "re-validate and publish (runs <model>__release)"),
                           ("reject", "give up on a batch; it is kept, never trained on")):
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
