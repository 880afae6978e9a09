"""``airloop demo``: set up the local stack, replay real days of flights (one deliberately broken) through the
real scheduler, let summer traffic drift, and canary the retrained model on real traffic.

Each phase is a function of explicit values that prints its step and returns what the verdict needs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airloop_local import stack
from airloop_local.cli import common, models, quarantine

if TYPE_CHECKING:
    from airloop.config import PipelineConfig
    from airloop_local.airflow_api import AirflowApi

#: the first summer day: two weeks land (the drift check scores the second), then a week for the canary
SUMMER_START = dt.date(2013, 7, 1)
SUMMER_DAYS, CANARY_DAYS = 14, 7
#: the DAGs the demo waits for and unpauses (release is only waited for: it runs on demand)
DEMO_VERBS = ("ingest", "features", "train", "deploy", "drift")


@dataclass
class DemoOutcome:
    """What the demo's verdict looks at: every ingest run's state, the broken day, the drift run's state and
    the retrains it caused, the canary rollouts, and the model's aliases at the end."""

    bad_day: dt.date
    runs: dict[str, str] = field(default_factory=dict)
    drift_state: str = ""
    retrains: list[dict[str, Any]] = field(default_factory=list)
    rollouts: list[dict[str, Any]] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)

    def succeeded(self, good_days: int) -> bool:
        """Every real day published, exactly the broken day stopped at the gate, a champion serves, summer
        traffic was found drifting and retrained on, and the retrained model's canary was decided."""
        ok = sum(1 for v in self.runs.values() if v == "success")
        failed = sorted(k for k, v in self.runs.items() if v == "failed")
        decided = any(r["status"] in ("promoted", "rolled_back") for r in self.rollouts)
        drifted = self.drift_state == "success" and any(r["state"] == "success" for r in self.retrains)
        return (
            ok == good_days
            and failed == [f"replay__{self.bad_day.isoformat()}"]
            and "champion" in self.aliases
            and drifted
            and decided
        )


def cmd_demo(args: argparse.Namespace) -> int:
    """Set up, replay real days (one deliberately broken), run them through the real scheduler."""
    return run_demo(common.settings(args), days=args.days, timeout_s=args.timeout)


def run_demo(s: stack.StackSettings, days: int, timeout_s: float) -> int:
    """The demo's phases in order; 0 when the verdict holds."""
    from airloop.config import get_pipeline

    t0 = time.monotonic()
    common.use_stack_env(s)
    cfg = get_pipeline(common.replay_model())
    winter = [common.DEMO_START + dt.timedelta(days=i) for i in range(days + 1)]
    outcome = DemoOutcome(bad_day=winter[-1])
    prepare(s, cfg, winter, outcome.bad_day)
    api = start_stack(s, cfg)
    outcome.runs.update(ingest_winter(api, cfg, winter, timeout_s))
    summer = [SUMMER_START + dt.timedelta(days=i) for i in range(SUMMER_DAYS + CANARY_DAYS)]
    outcome.runs.update(land_summer(s, api, cfg, summer[:SUMMER_DAYS], timeout_s))
    outcome.drift_state, outcome.retrains = check_drift(s, api, cfg, summer[SUMMER_DAYS // 2 : SUMMER_DAYS], timeout_s)
    canary_runs, outcome.rollouts = canary_week(s, api, cfg, summer[SUMMER_DAYS:], timeout_s)
    outcome.runs.update(canary_runs)
    print(f"Done in {time.monotonic() - t0:.0f} s", flush=True)
    outcome.aliases = print_summary(s, cfg, outcome.runs)
    return common.EXIT_OK if outcome.succeeded(good_days=days + SUMMER_DAYS + CANARY_DAYS) else common.EXIT_FAILURE


def prepare(s: stack.StackSettings, cfg: PipelineConfig, days: list[dt.date], bad_day: dt.date) -> None:
    """[1/7] the Airflow home; [2/7] land the real days, ``bad_day`` with a unit mix-up."""
    from airloop.sources import replay_adapter
    from airloop.storage import DataRoot

    print(f"[1/7] Airflow home at {s.airflow_home} ({stack._safe_url(s.db_url)})", flush=True)
    stack.init(s)
    print(
        f"[2/7] Landing {len(days) - 1} real days of flights from {days[0]}, and {bad_day} with a unit mix-up "
        "(distance in metres, an impossible month) that the gate must stop",
        flush=True,
    )
    replay_adapter().replay_days(
        DataRoot(s.data_root), cfg.name, days, file_name=cfg.source.file_name, corruptions={bad_day: "out_of_range"}
    )


def start_stack(s: stack.StackSettings, cfg: PipelineConfig) -> AirflowApi:
    """[3/7] start the stack, wait until the model's DAGs are parsed, unpause them."""
    print(f"[3/7] Starting the local stack on {s.base_url}", flush=True)
    common.warn_exited_servers(s, stack.start(s))
    api = common.api(s)
    for verb in (*DEMO_VERBS, "release"):
        api.wait_for_dag(cfg.dag_id(verb))
    for verb in DEMO_VERBS:
        api.unpause(cfg.dag_id(verb))
    return api


def ingest_winter(api: AirflowApi, cfg: PipelineConfig, days: list[dt.date], timeout_s: float) -> dict[str, str]:
    """[4/7] one ingest run per day through the scheduler; [5/7] wait for features, training and the first
    deployment. Returns the ingest runs' states."""
    dag_id = cfg.dag_id("ingest")
    print(f"[4/7] Running {dag_id} for the data intervals {days[0]} .. {days[-1]} through the scheduler", flush=True)
    runs = common.wait_runs(api, dag_id, {api.trigger_interval(dag_id, d) for d in days}, timeout_s=timeout_s)
    print(
        "[5/7] Features (Spark) and training (local process, MLflow) follow until a first champion serves", flush=True
    )
    common.wait_idle(api, [cfg.dag_id(v) for v in ("features", "train", "deploy")], timeout_s=timeout_s)
    return runs


def land_summer(
    s: stack.StackSettings, api: AirflowApi, cfg: PipelineConfig, summer: list[dt.date], timeout_s: float
) -> dict[str, str]:
    """[6/7] the summer weeks land and are ingested (features and training follow); returns the runs' states."""
    from airloop.sources import replay_adapter
    from airloop.storage import DataRoot

    week = summer[len(summer) // 2 :]
    print(
        f"[6/7] Summer: {summer[0]} .. {summer[-1]} lands and is ingested; the January champion scores the "
        f"flights of {week[0]} .. {week[-1]} (replayed with their event times); {cfg.dag_id('drift')} checks "
        "that week",
        flush=True,
    )
    replay_adapter().replay_days(DataRoot(s.data_root), cfg.name, summer, file_name=cfg.source.file_name)
    dag_id = cfg.dag_id("ingest")
    runs = common.wait_runs(api, dag_id, {api.trigger_interval(dag_id, d) for d in summer}, timeout_s=timeout_s)
    common.wait_idle(api, [cfg.dag_id("features"), cfg.dag_id("train")], timeout_s=timeout_s)
    return runs


def check_drift(
    s: stack.StackSettings, api: AirflowApi, cfg: PipelineConfig, week: list[dt.date], timeout_s: float
) -> tuple[str, list[dict[str, Any]]]:
    """The champion scores ``week``'s flights; the drift DAG checks that week and starts a retraining.
    Returns the drift run's state and the retraining runs."""
    from airloop.storage import DataRoot

    counts = replay_traffic(s, cfg, week)
    print(f"  traffic: {json.dumps(dict(sorted(counts.items())))}", flush=True)
    drift_dag = cfg.dag_id("drift")
    drift_run = api.trigger_interval(drift_dag, week[0], days=len(week))
    drift_state = common.wait_runs(api, drift_dag, {drift_run}, timeout_s=timeout_s)[drift_run]
    models.print_drift_history(DataRoot(s.data_root), cfg.name, as_json=False)
    common.wait_idle(api, [cfg.dag_id("train")], timeout_s=timeout_s, settle_s=10.0)
    return drift_state, print_retrains(api, cfg)


def print_retrains(api: AirflowApi, cfg: PipelineConfig) -> list[dict[str, Any]]:
    """The training runs the drift DAG started, with the drift figures in their conf."""
    retrains = [r for r in api.dag_runs(cfg.dag_id("train")) if r["dag_run_id"].startswith("drift__")]
    for r in retrains:
        ctx = (r.get("conf") or {}).get("drift") or {}
        print(
            f"  {cfg.dag_id('train')} run {r['dag_run_id']}: {r['state']} (conf reason=drift; drifted "
            f"{sorted(ctx.get('drifted_columns', {}))}, share {ctx.get('drift_share')}, prediction score "
            f"{ctx.get('prediction_score')})",
            flush=True,
        )
    return retrains


def canary_week(
    s: stack.StackSettings, api: AirflowApi, cfg: PipelineConfig, days: list[dt.date], timeout_s: float
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """[7/7] ``days`` land, announced by signed webhooks, and are replayed as live traffic while the deploy
    DAG canaries the retrained challenger. Returns the ingest runs' states and the rollouts."""
    from airloop.sources import replay_adapter
    from airloop.storage import DataRoot

    print(
        f"[7/7] {days[0]} .. {days[-1]} lands, announced by signed webhooks (outcomes for the online metric), and "
        f"is replayed as live traffic while {cfg.dag_id('deploy')} canaries the retrained challenger "
        f"(steps {list(cfg.canary.steps)}%)",
        flush=True,
    )
    replay_adapter().replay_days(DataRoot(s.data_root), cfg.name, days, file_name=cfg.source.file_name)
    hook_runs = announce(s, cfg.webhooks[0].name, days)
    runs = common.wait_runs(api, cfg.dag_id("ingest"), hook_runs, timeout_s=timeout_s)
    return runs, canary_on_real_traffic(s, api, cfg, days, timeout_s=timeout_s)


def announce(s: stack.StackSettings, source: str, days: list[dt.date]) -> set[str]:
    """One signed webhook per landed day, as an upstream system sends them; returns the runs they started."""
    from airloop_local.webhook_client import deliver

    runs = set()
    for d in days:
        status, answer = deliver(s, source, d)
        print(f"  webhook {source} {d}: HTTP {status} -> run {answer.get('dag_run_id')}", flush=True)
        runs.add(answer["dag_run_id"])
    return runs


def request_bodies(cfg: PipelineConfig, days: list[dt.date]) -> list[tuple[str | None, bytes, str | None]]:
    """One scoring request per real flight of ``days`` (with its event time), as the model's config
    describes its requests."""
    import pandas as pd

    from airloop.serving import replay
    from airloop.sources import replay_adapter

    rows = pd.concat([replay_adapter().day_frame(d) for d in days], ignore_index=True)
    return replay.bodies_for(cfg, rows)


def replay_traffic(s: stack.StackSettings, cfg: PipelineConfig, days: list[dt.date]) -> dict[str, int]:
    """Send every flight of ``days`` once as a scoring request to the model's server."""
    from airloop.serving import replay

    return dict(replay.replay(s.model_server_url_for(cfg.name), request_bodies(cfg, days), concurrency=6))


def canary_on_real_traffic(
    s: stack.StackSettings, api: AirflowApi, cfg: PipelineConfig, days: list[dt.date], timeout_s: float
) -> list[dict[str, Any]]:
    """Replay ``days`` as live scoring requests while the deploy DAG walks its canary steps.

    :returns: the rollouts that ran (their state files), oldest first
    """
    from airloop.serving import replay

    bodies = request_bodies(cfg, days)
    url = s.model_server_url_for(cfg.name)
    done = threading.Event()
    counts: dict[str, int] = {}
    sender = threading.Thread(
        target=lambda: counts.update(replay.replay(url, bodies, concurrency=4, loop=True, stop=done.is_set)),
        daemon=True,
    )
    sender.start()
    try:
        common.wait_idle(api, [cfg.dag_id("deploy")], timeout_s=timeout_s, settle_s=15.0)
    finally:
        done.set()
        sender.join(timeout=60)
    print(
        f"  traffic: {len(bodies)} real flights of {days[0]} .. {days[-1]} replayed as requests: "
        + json.dumps(dict(sorted(counts.items()))),
        flush=True,
    )
    return print_rollouts(s, cfg.name)


def print_rollouts(s: stack.StackSettings, model: str) -> list[dict[str, Any]]:
    """Every canary rollout of ``model`` with each step's decision and figures, oldest first."""
    from airloop.storage import DataRoot

    root = DataRoot(s.data_root)
    folder = root.canary_folder(model)
    states = [root.read_json(f"{folder}/{name}") for name in root.list_names(folder) if name.endswith(".json")]
    states.sort(key=lambda x: x["started_at"])
    for st in states:
        print(f"  canary of v{st['version']} (champion was v{st['champion_version']}): {st['status']}")
        for d in st["decisions"]:
            f = d["figures"]
            print(
                f"    {d['percent']:>3}%: {d['action']:8s} {d['reason']}  "
                f"[challenger {f['challenger_requests']:.0f} req, "
                f"5xx {f['challenger_5xx_rate']:.2%}, p{100 * f.get('latency_quantile', 0.99):.4g} latency "
                f"{f['p99_latency_s']}, PSI {f['prediction_psi']}, "
                f"online metric {f['online_metric']}]"
            )
    return states


def print_summary(s: stack.StackSettings, cfg: PipelineConfig, runs: dict[str, str]) -> dict[str, str]:
    """The ingest runs, the quarantine, the registered model, the alerts and where to look in the UI;
    returns the model's aliases."""
    from airloop.storage import DataRoot

    root = DataRoot(s.data_root)
    dag_id = cfg.dag_id("ingest")
    ok = sum(1 for v in runs.values() if v == "success")
    failed = sorted(k for k, v in runs.items() if v == "failed")
    print(f"\n{dag_id}: {ok} successful runs, {len(failed)} failed: {failed}")
    quarantine.print_quarantine(root, [cfg.name], include_decided=False)
    aliases = models.print_registered_model(s, cfg.name)
    print("\nOn-call alerts (one per failed task; `airloop alerts`):")
    models.print_alerts(root, [cfg.name], last=5, as_json=False)
    print(
        f"\nIn the UI: Dags > {dag_id} shows the runs; in the failed run, task validate_batch > Details has "
        "the extra links 'Validation report' and 'Runbook'; Browse > Quarantine lists quarantined batches. "
        f"Dags > {cfg.dag_id('deploy')} shows the canary (watch_canary's log has each step's figures); the "
        f"train tasks link their MLflow run and model version; the last week's ingest runs came from webhooks; "
        f"`{stack.cli_command(s, 'models', 'history', cfg.name)}` prints the alias history."
    )
    common.print_login(s)
    return aliases


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``demo``."""
    sp = common.add_command(sub, "demo", help="set up the stack and run the demo on real flights")
    common.add_stack_options(sp)
    sp.add_argument(
        "--days", type=common.positive_int, default=21, help="real days to replay (one broken day follows them)"
    )
    sp.add_argument("--timeout", type=common.positive_float, default=1200, help="seconds to wait for the runs")
    sp.set_defaults(func=cmd_demo)
