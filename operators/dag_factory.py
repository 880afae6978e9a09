"""Build every model's DAGs from its pipeline config: ``<model>__<verb>``.

Called by the one DAG factory file ``dags/airloop_pipelines.py``. Building a DAG reads only the (small, shipped)
pipeline configs; no heavy module is imported, no database or connection is touched.

A broken config costs only its own model's DAGs: :func:`build_pipeline_dags` leaves it out, and
:func:`check_pipeline_configs` (called by ``dags/airloop_pipeline_configs.py``, a file of its own) raises
the error naming the YAML and its bad fields. The DAG processor records an import error against the
whole file that raised it and marks every DAG of that file stale, so the error must not come from the
file that defines the good models' DAGs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from airloop.errors import ConfigError
from airloop_airflow.assets import model_asset
from airloop_airflow.notifiers.alerts import AirloopFailureNotifier
from airloop_airflow.operators.canary import ConcludeCanaryOperator, StartCanaryOperator
from airloop_airflow.operators.drift import DriftCheckOperator, RetrainOnDriftOperator
from airloop_airflow.operators.features import FeatureJobOperator
from airloop_airflow.operators.ingest import BatchIngestOperator, BatchValidationOperator, QuarantineReleaseOperator
from airloop_airflow.operators.training import ChampionChallengerGateOperator, ModelRollbackOperator, TrainModelOperator
from airloop_airflow.sensors.canary import CanaryStepSensor
from airloop_airflow.sensors.drift import DriftSensor

if TYPE_CHECKING:
    from airloop.config import PipelineConfig


def _start(d: dt.date) -> dt.datetime:
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)


def default_args(cfg: PipelineConfig) -> dict[str, Any]:
    """Owner and retry policy from the config: transient failures retry with exponential backoff; a task
    that fails for good sends one on-call alert."""
    return {
        "owner": cfg.owner,
        "on_failure_callback": [AirloopFailureNotifier()],
        "retries": cfg.retries.retries,
        "retry_delay": dt.timedelta(seconds=cfg.retries.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": dt.timedelta(seconds=cfg.retries.max_retry_delay_seconds),
    }


def _model_dag(
    cfg: PipelineConfig, verb: str, *, schedule: Any, tags: list[str], retries: int | None = None, **kwargs: Any
) -> DAG:
    """A DAG of one model: id ``<model>__<verb>``, the config's start date and owner/retry policy, catchup
    off unless given, and the model's tags."""
    args = default_args(cfg) if retries is None else {**default_args(cfg), "retries": retries}
    kwargs.setdefault("catchup", False)
    return DAG(
        dag_id=cfg.dag_id(verb),
        schedule=schedule,
        start_date=_start(cfg.schedule.start_date),
        tags=["airloop", cfg.name, *tags],
        default_args=args,
        **kwargs,
    )


def _manual_run_example(cfg: PipelineConfig) -> str:
    """How a manual run's logical date picks its batch, with the config's first batch as the example."""
    first = cfg.schedule.start_date
    rule = (
        "a manual run's data interval is the schedule's last whole interval ending at or before its "
        "logical date, and its batch is `ds=<the interval's start date>`"
    )
    if cfg.schedule.cron in ("@daily", "@midnight", "0 0 * * *"):
        return f"{rule}: {first + dt.timedelta(days=1)} 00:00 ingests ds={first}, the first batch"
    return f"{rule}; the first batch is ds={first}"


def _webhook_names(cfg: PipelineConfig) -> str:
    return ": " + ", ".join(f"`{w.name}`" for w in cfg.webhooks) if cfg.webhooks else ""


def _ingest_doc(cfg: PipelineConfig) -> str:
    return f"""
# {cfg.name}: ingest and validate one batch

{cfg.description.strip()}

**What it does.** Each run takes the batch of its data interval (schedule `{cfg.schedule.cron}`,
timezone {cfg.schedule.timezone}) from `landing/{cfg.name}/ds=<date>/{cfg.source.file_name}`, or the URI
given as `source_uri` in the run conf (webhooks use this), and writes it atomically to
`raw/{cfg.name}/ds=<date>/` with a manifest (rows, columns, content hash, source URI). Re-running an
interval replaces its partition.

**The gate.** `validate_batch` runs the Great Expectations suite `{cfg.validation.suite}` plus the schema
checks from the config. Pass: the batch is published as an event on Asset `{cfg.asset_name("validated")}`
(the feature DAG's trigger). Fail: the batch moves to `quarantine/{cfg.name}/ds=<date>/` with
`validation.json` and `report.html`; the task fails without retries, listing every failed expectation.

**On call** (task failed):
* `validate_batch` failed: open **Validation report** (extra link on the task) to see what failed.
  Fix upstream and clear the run, or `airloop quarantine release {cfg.name} ds=<date>` after fixing the
  suite, or `airloop quarantine reject {cfg.name} ds=<date> --reason "..."`.
* `ingest_batch` failed with "could not be read": the file is not valid `{cfg.source.format}`; it is kept
  in quarantine as received. Ask the producer for a new file and re-run.
* `ingest_batch` failed with "no batch at": the feed is late; the task already retried with backoff.

**Trigger from the UI**: set *Logical Date* to the end of the batch's data interval
({_manual_run_example(cfg)}). Dates after the feed's end ({cfg.schedule.end_date or "none"}) make a run
without tasks.

Run conf: `source_uri` (optional, any fsspec URI). Upstream systems start runs with a signed webhook
(`POST /airloop/webhooks/<source>` on the API server{_webhook_names(cfg)}):
run id `webhook__<source>__<delivery id>`, `source_uri` from the delivery.

Every task that fails for good sends one on-call alert ({", ".join(cfg.alerts.channels)}) with its log URL
and runbook; `airloop alerts {cfg.name}` lists them, and each task's **Runbook** link opens its runbook.
"""


def build_ingest_dag(cfg: PipelineConfig) -> DAG:
    """``<model>__ingest``: ingest the interval's batch, then gate it."""
    with _model_dag(
        cfg,
        "ingest",
        tags=["ingest", *cfg.tags],
        description=f"Ingest and validate one {cfg.name} batch per data interval",
        schedule=CronDataIntervalTimetable(cfg.schedule.cron, timezone=cfg.schedule.timezone),
        end_date=_start(cfg.schedule.end_date) if cfg.schedule.end_date else None,
        catchup=cfg.schedule.catchup,
        max_active_runs=2,
        doc_md=_ingest_doc(cfg),
        params={
            "source_uri": Param(
                None,
                type=["null", "string"],
                description="Read the batch from this URI instead of the interval's landing file",
            )
        },
    ) as dag:
        ingest = BatchIngestOperator(
            task_id="ingest_batch",
            model=cfg.name,
            source_uri="{{ params.source_uri or '' }}",
            doc_md="Read the batch and write its raw partition atomically, with a manifest.",
        )
        validate = BatchValidationOperator(
            task_id="validate_batch",
            model=cfg.name,
            doc_md="The Great Expectations gate: publish the batch, or quarantine it with its report.",
        )
        ingest >> validate
    return dag


def build_release_dag(cfg: PipelineConfig) -> DAG:
    """``<model>__release``: on-call re-validates a quarantined batch and publishes it if it now passes."""
    example = f"ds={cfg.schedule.start_date}"
    with _model_dag(
        cfg,
        "release",
        tags=["quarantine", "on-call"],
        retries=0,
        description=f"Release a quarantined {cfg.name} batch (re-validate, then publish)",
        schedule=None,
        doc_md=f"""
# {cfg.name}: release a quarantined batch

Trigger with conf `{{"partition": "{example}"}}` (or run `airloop quarantine release {cfg.name} {example}`).
The batch in `quarantine/{cfg.name}/<partition>/` is validated again with the current suite. If it passes it
is written to `raw/` and published on `{cfg.asset_name("validated")}`, and the quarantine entry is marked
`released`; if it still fails, the task fails with the failed expectations and the report is refreshed.
To give up on a batch instead: `airloop quarantine reject {cfg.name} <partition> --reason "..."`.
""",
        params={"partition": Param(type="string", description=f"quarantined partition, e.g. {example}")},
    ) as dag:
        QuarantineReleaseOperator(task_id="release_batch", model=cfg.name, partition="{{ params.partition }}")
    return dag


def _feature_definition(cfg: PipelineConfig) -> str:
    """The config's feature definition in a sentence: its function, or its vocabulary entries."""
    f = cfg.features
    if f.module:

        def listed(names: tuple[str, ...]) -> str:
            return ", ".join(f"`{n}`" for n in names) or "none"

        what = (
            f"the config's function `{f.module}` (installed, or a module next to the model's YAML): reads "
            f"{listed(f.inputs)}; returns numeric {listed(f.numeric)} and categorical {listed(f.categorical)}"
        )
    else:
        what = "the config's feature vocabulary: " + ", ".join(f"`{c.name}` ({c.transform})" for c in f.columns)
    if f.piecewise:
        names = ", ".join(f"`{c}`" for c in f.piecewise)
        what += (
            f"; {names} {'also gets' if len(f.piecewise) == 1 else 'also get'} a piecewise-linear "
            f"encoding in {f.piecewise_bins} quantile bins"
        )
    return what


def build_features_dag(cfg: PipelineConfig) -> DAG:
    """``<model>__features``: Spark features for each newly validated partition."""
    with _model_dag(
        cfg,
        "features",
        tags=["features", "spark"],
        description=f"Spark features for validated {cfg.name} partitions",
        schedule=[model_asset(cfg.name, "validated")],
        max_active_runs=1,
        doc_md=f"""
# {cfg.name}: features

Runs when `{cfg.asset_name("validated")}` has new events: the PySpark job
`include/airloop/spark/build_features.py` (through the `spark_default` connection: `local[2]` locally, a
`spark://` or `k8s://` master in production) reads the partitions those events announce, plus any
validated partition whose features are missing or stale, and only partitions that passed the gate; applies
the model's feature definition through `airloop.features.compute_features` (the same code serving applies
to requests), and replaces `features/{cfg.name}/<partition>/` atomically. Publishes
`{cfg.asset_name("features")}` with the partitions, row counts and the feature version.
A manual run may pass `{{"partitions": ["ds=..."]}}`.

**Features**: {_feature_definition(cfg)}.

**On call**: a failed Spark job is retried; its driver log is in the task log. Rebuild a partition with a
manual run and conf `partitions`.
""",
    ) as dag:
        FeatureJobOperator(task_id="build_features", model=cfg.name, pool="spark")
    return dag


def build_train_dag(cfg: PipelineConfig) -> DAG:
    """``<model>__train``: train (GPU pod or local process), register once, gate."""
    with _model_dag(
        cfg,
        "train",
        tags=["training", "mlflow"],
        description=f"Train, register and gate a {cfg.name} model",
        schedule=[model_asset(cfg.name, "features")],
        max_active_runs=1,
        params={
            "reason": Param("schedule", enum=["schedule", "drift", "manual"], description="why this training runs"),
            "drift": Param(None, type=["null", "object"], description="drift context, when drift triggered it"),
        },
        doc_md=f"""
# {cfg.name}: train, register, gate

Runs when new features land on `{cfg.asset_name("features")}` (and as the retraining DAG: conf `reason`
= `schedule` | `drift` | `manual`, `drift` = the drift context).

1. `train_model`: `python -m airloop.training.train` on the latest {cfg.training.window_days} feature
   partitions: in a Kubernetes pod on a GPU node (`{cfg.training.image}`, {cfg.training.gpus} GPU) when the
   connection `{cfg.training.kubernetes_conn_id}` exists, else as a local process (the log says which).
   Logs to MLflow with lineage tags and registers exactly one version per DAG run (retries reuse it).
2. `gate_challenger`: scores the new version and `@champion` on the same holdout days. Passes when
   {cfg.gate.metric} >= {cfg.gate.min_metric} and at most {cfg.gate.max_regression} behind the champion:
   alias `challenger` (or `champion` if there is none yet) and an event on `{cfg.asset_name("challenger")}`.

**On call**: `gate_challenger` failed = the model was not good enough; its message gives both scores and
aliases are unchanged (nothing to undo). `train_model` pending for long = no GPU node: check the pod's
events (`kubectl -n {cfg.training.namespace} describe pod -l airloop/model={cfg.name.replace("_", "-")}`).
""",
    ) as dag:
        train = TrainModelOperator(
            task_id="train_model",
            model=cfg.name,
            pool="training",
            reason="{{ params.reason }}",
            drift="{{ params.drift | tojson }}",
        )
        gate = ChampionChallengerGateOperator(task_id="gate_challenger", model=cfg.name, retries=0)
        train >> gate
    return dag


def build_deploy_dag(cfg: PipelineConfig) -> DAG:
    """``<model>__deploy``: the canary of a challenger, ending in promote or rollback."""
    from airloop_airflow.targets import target_summary

    c = cfg.canary
    steps = " -> ".join(f"{p}%" for p in c.steps)
    target = target_summary(cfg)
    with _model_dag(
        cfg,
        "deploy",
        tags=["deployment", "canary"],
        retries=None,
        description=f"Canary rollout of a {cfg.name} challenger: promote or roll back on measured figures",
        schedule=[model_asset(cfg.name, "challenger")],
        max_active_runs=1,
        params={
            "version": Param(None, type=["null", "string"], description="version to roll out (default @challenger)")
        },
        doc_md=f"""
# {cfg.name}: canary deployment

Runs when a challenger passes the gate (`{cfg.asset_name("challenger")}`), or by hand with conf
`{{"version": "<n>"}}`. Target: {target}.

1. `start_canary` loads the challenger and gives it {c.steps[0]}% of the traffic (steps {steps}).
2. `watch_canary` looks every {c.poke_seconds} s (deferred to the triggerer: no worker slot held in between). A step
   is judged after {c.interval_seconds} s and {c.min_requests} challenger requests, comparing challenger and
   champion on that step's traffic: 5xx rate (at most {c.max_5xx_rate:.0%}), p99 latency (at most
   {c.max_p99_latency_ratio}x the champion's; with few requests, the highest quantile leaving
   {c.latency_min_tail_requests} requests above it), prediction shift (PSI at most {c.max_prediction_psi}).
   No traffic holds the step; a rollout still holding after {c.deadline_minutes} min is rolled back.
3. `conclude_canary`: promote = `champion` -> new version, old champion -> `previous` (alias history);
   rollback = challenger share 0, aliases unchanged, an alert, and this task fails with the figures.

**On call** (`conclude_canary` failed = rolled back): the message has the failing figures; the state of each
step is in `reports/{cfg.name}/canary/v<version>.json`. Nothing to undo: the champion serves all traffic.
To put an earlier version back by hand: `airloop models rollback {cfg.name} <version> --reason "..."`.
""",
    ) as dag:
        start = StartCanaryOperator(task_id="start_canary", model=cfg.name, version="{{ params.version or '' }}")
        watch = CanaryStepSensor(
            task_id="watch_canary",
            model=cfg.name,
            poke_interval=c.poke_seconds,
            timeout=c.deadline_minutes * 60 + 10 * c.poke_seconds,
            retries=2,
        )
        conclude = ConcludeCanaryOperator(task_id="conclude_canary", model=cfg.name, retries=0)
        start >> watch >> conclude
    return dag


def build_drift_dag(cfg: PipelineConfig) -> DAG:
    """``<model>__drift``: Evidently drift of the served traffic; retrain when it drifts."""
    d = cfg.drift
    special = ", ".join(f"{c} {t}" for c, t in d.column_thresholds.items()) or "none"
    with _model_dag(
        cfg,
        "drift",
        tags=["monitoring", "drift", "evidently"],
        description=f"Drift of {cfg.name}'s live traffic against its champion's training data; retrain on drift",
        schedule=CronDataIntervalTimetable(d.cron, timezone=cfg.schedule.timezone),
        max_active_runs=1,
        doc_md=f"""
# {cfg.name}: drift checks and retraining on drift

Schedule `{d.cron}`: each run takes the predictions whose event time falls in its data interval (the
prediction log, `predictions/{cfg.name}/ds=<day>/`) and compares them with the reference sample the
`@champion`'s training run logged to MLflow (`reference/reference_sample.parquet`).

1. `check_drift`: Evidently 0.7 per-column drift ({d.num_method} for numeric, {d.cat_method} for categorical
   columns; a column drifts at {d.column_threshold}, overrides: {special}); the dataset drifts when
   {d.drift_share:.0%} of the features drift; the prediction column is judged apart. At most
   {d.sample_rows} rows per side are compared (seeded sample). The HTML report is on the task
   (**Drift report** link), in `reports/{cfg.name}/drift/<day>/`, and on the champion's MLflow run; the
   figures go to `reports/{cfg.name}/drift/history.jsonl` and the plot `trend.html`
   (`airloop drift history {cfg.name}`).
2. `watch_drift`: the drift sensor (deferred to the triggerer, no slot held while waiting) succeeds when the latest
   result drifts; it skips when this interval's result says no drift.
3. `trigger_retrain`: starts `{cfg.dag_id("train")}` with conf `{{"reason": "drift", "drift": <context>}}` and
   emits `{cfg.asset_name("drift")}` with the same context. At most one per {d.cooldown_hours} h; never while
   a training run is queued or running.

**On call**: a drift alarm you judge harmless (a holiday, a one-off event): let the cooldown hold it, or
pause this DAG; the report link shows which columns moved and by how much.
""",
    ) as dag:
        check = DriftCheckOperator(task_id="check_drift", model=cfg.name)
        watch = DriftSensor(
            task_id="watch_drift",
            model=cfg.name,
            poke_interval=60,
            timeout=d.sensor_timeout_minutes * 60,
            soft_fail=True,
            retries=2,
        )
        trigger = RetrainOnDriftOperator(task_id="trigger_retrain", model=cfg.name, retries=0)
        check >> watch >> trigger
    return dag


def build_rollback_dag(cfg: PipelineConfig) -> DAG:
    """``<model>__rollback``: on-call puts an earlier version back as champion."""
    with _model_dag(
        cfg,
        "rollback",
        tags=["on-call", "mlflow"],
        retries=0,
        description=f"Put an earlier {cfg.name} version back as champion",
        schedule=None,
        params={
            "version": Param(type="string", description="the registered version to restore"),
            "reason": Param(type="string", minLength=3, description="why (kept in the alias history)"),
        },
        doc_md=f"""
# {cfg.name}: manual rollback

Trigger with conf `{{"version": "3", "reason": "p99 latency regression in prod"}}`, or run
`airloop models rollback {cfg.name} 3 --reason "..."`. Alias `champion` moves to that version at once,
the replaced champion becomes `previous`, and both changes go to the alias history
(`reports/{cfg.name}/alias_history.jsonl`; `airloop models history {cfg.name}` prints it).
""",
    ) as dag:
        ModelRollbackOperator(
            task_id="rollback_champion", model=cfg.name, version="{{ params.version }}", reason="{{ params.reason }}"
        )
    return dag


#: one builder per ``<model>__<verb>`` DAG
BUILDERS = (
    build_ingest_dag,
    build_release_dag,
    build_features_dag,
    build_train_dag,
    build_deploy_dag,
    build_drift_dag,
    build_rollback_dag,
)


def build_pipeline_dags(folder: str | None = None) -> dict[str, DAG]:
    """Every DAG of every valid pipeline config, by dag_id. A broken config is left out (its model has no
    DAGs until it is fixed); :func:`check_pipeline_configs` reports it.

    :param folder: the pipelines folder (default: ``AIRLOOP_PIPELINES_DIR`` or the package's)
    """
    from airloop.config import load_pipelines

    dags: dict[str, DAG] = {}
    for cfg in load_pipelines(folder)[0]:
        for builder in BUILDERS:
            dag = builder(cfg)
            dags[dag.dag_id] = dag
    return dags


def check_pipeline_configs(folder: str | None = None) -> None:
    """Raise one :class:`ConfigError` naming every broken pipeline config (file and bad fields); return
    quietly when all of them load.

    :param folder: the pipelines folder (default: ``AIRLOOP_PIPELINES_DIR`` or the package's)
    """
    from airloop.config import load_pipelines

    errors = load_pipelines(folder)[1]
    if not errors:
        return
    models = ", ".join(Path(path).stem for path in sorted(errors))
    details = "\n".join(errors[path] for path in sorted(errors))
    raise ConfigError(
        f"{len(errors)} pipeline config(s) broken, so these models have no DAGs: {models}. Every other "
        f"model's DAGs load as usual. Fix the fields named below and save; the DAG processor picks the "
        f"file up on its next pass.\n{details}"
    )
