"""Typed pipeline configs: one YAML file per model under ``include/airloop/pipelines/``.

A config is loaded into frozen pydantic models; an invalid file raises :class:`~airloop.errors.ConfigError`
naming the file and the dotted path of every bad field. Loading is cheap (PyYAML + pydantic, both already
imported by Airflow), so the DAG factory may call it while parsing.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import string
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from airloop.errors import ConfigError
from airloop.features import FeaturesConfig, feature_columns, input_columns

PACKAGE_DIR = Path(__file__).resolve().parent
PIPELINES_DIR = PACKAGE_DIR / "pipelines"
EXPECTATIONS_DIR = PACKAGE_DIR / "expectations"

ColumnType = Literal["int", "float", "string", "timestamp", "bool"]
TaskType = Literal["binary_classification", "regression"]
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

#: Defaults shared by several config classes below. Code outside this module reads a default from its
#: field (``TrainingConfig.model_fields["seed"].default``) rather than repeating the figure.
#: The seed of training and of the drift check's sample: a run is reproducible from its config alone.
DEFAULT_SEED = 13
#: The Airflow connection of the cluster that runs training pods and KServe services.
KUBERNETES_CONN_ID = "kubernetes_default"

#: The metrics a gate (and the canary's online check) may use per task, and whether higher is better.
GATE_METRICS: dict[str, dict[str, bool]] = {
    "binary_classification": {"roc_auc": True, "pr_auc": True, "log_loss": False},
    "regression": {"rmse": False, "mae": False, "r2": True},
}


def higher_is_better(metric: str) -> bool:
    """The direction of a gate metric (every metric in :data:`GATE_METRICS`)."""
    for metrics in GATE_METRICS.values():
        if metric in metrics:
            return metrics[metric]
    raise ValueError(f"unknown metric {metric!r}; known: {sorted({m for ms in GATE_METRICS.values() for m in ms})}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LabelConfig(_Frozen):
    """How the target is derived from a source column that is known only after the outcome."""

    source_column: str
    positive_above: float | None = Field(
        default=None, description="binary classification: label = source_column > positive_above"
    )


class TaskConfig(_Frozen):
    type: TaskType
    target: str
    label: LabelConfig

    @model_validator(mode="after")
    def _label_fits_task(self) -> TaskConfig:
        if self.type == "binary_classification" and self.label.positive_above is None:
            raise ValueError("label.positive_above is required for binary_classification")
        if self.type == "regression" and self.label.positive_above is not None:
            raise ValueError(
                "label.positive_above is only for binary_classification; a regression target is "
                "the source column's value"
            )
        return self


class SourceConfig(_Frozen):
    """Where batches come from.

    ``files``: an upstream system drops one file per data interval at
    ``<landing_uri>/<model>/<partition>/<file_name>`` (any fsspec location; default the data root's
    ``landing/``). ``replay``: the demo's adapter (``airloop replay``) fills that layout
    (``airloop replay``); ingestion reads it the same way.
    """

    kind: Literal["files", "replay"] = "files"
    format: Literal["csv", "parquet", "jsonl"] = "csv"
    file_name: str = "batch.csv"
    landing_uri: str | None = Field(
        default=None, description="fsspec folder holding <model>/<partition>/; default: <data root>/landing"
    )
    max_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    manifest_file: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$",
        description="a JSON file the producer writes next to each batch file, after it, announcing its "
        '"rows" and "sha256": the batch has not landed until it exists, and what it announces is checked',
    )
    protocols: tuple[str, ...] = Field(
        default=(),
        description="fsspec protocols a batch may be read with (file, s3, gcs, memory, ...); "
        "empty: the protocol of the landing folder (file locally). A source_uri with another is refused",
    )

    @field_validator("protocols")
    @classmethod
    def _plain_protocols(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in v if not re.fullmatch(r"[a-z][a-z0-9+.-]*", p)]
        if bad:
            raise ValueError(f"protocols are lower-case fsspec protocol names such as file or s3, not {bad}")
        return v

    @model_validator(mode="after")
    def _manifest_beside_the_batch(self) -> SourceConfig:
        if self.manifest_file is not None and self.manifest_file == self.file_name:
            raise ValueError(f"manifest_file must be another file than file_name ({self.file_name!r})")
        return self


class ScheduleConfig(_Frozen):
    cron: str = "@daily"
    start_date: dt.date
    end_date: dt.date | None = None
    catchup: bool = False
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleConfig:
        if self.end_date is not None and self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        return self


class SchemaConfig(_Frozen):
    """Columns every batch must carry, with their types; checked by the validation gate."""

    columns: dict[str, ColumnType]
    timestamp_columns: tuple[str, ...] = ()
    #: when a row's event happens: orders rows in time (the validation split) and dates replayed requests
    event_time: str | None = None
    #: what identifies one row (an entity at a time): a batch holding two rows with the same key fails the
    #: gate (a re-sent or concatenated file), and it is the sticky request key of replayed traffic
    key_columns: tuple[str, ...] = ()
    leakage_columns: tuple[str, ...] = Field(
        default=(), description="known only after the outcome: label source only, never a feature"
    )
    allow_extra_columns: bool = Field(
        default=False,
        description="accept batches with columns not in schema.columns (kept, never read); "
        "false: an undeclared column fails the gate, since an upstream change should be seen, not ignored",
    )

    @model_validator(mode="after")
    def _columns_known(self) -> SchemaConfig:
        for field_name in ("timestamp_columns", "leakage_columns", "key_columns"):
            unknown = [c for c in getattr(self, field_name) if c not in self.columns]
            if unknown:
                raise ValueError(f"{field_name} names columns not in schema.columns: {unknown}")
        if self.event_time is not None and self.event_time not in self.timestamp_columns:
            raise ValueError(
                f"event_time {self.event_time!r} must be one of timestamp_columns {list(self.timestamp_columns)}"
            )
        return self


class ValidationConfig(_Frozen):
    """The gate: the expectation suite, and the checks the config drives (row counts, event times)."""

    suite: str = Field(description="expectation suite file: next to the YAML, or in the expectations folder beside it")
    min_rows: int = Field(default=1, ge=0)
    min_rows_relative: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="a batch with fewer rows than this share of the median of the last min_rows_window "
        "published batches fails (0.5: below half the usual); unset, or no published batch yet: min_rows only",
    )
    min_rows_window: int = Field(
        default=14, ge=1, description="published batches the median of min_rows_relative spans"
    )
    event_time_timezone: str | None = Field(
        default=None,
        description="the time zone whose wall-clock days the data intervals name: a batch of day D holds "
        "events from D 00:00 to D+1 00:00 there (e.g. a feed of local days). Default: schedule.timezone",
    )
    event_time_tolerance_minutes: int = Field(
        default=0,
        ge=0,
        description="events this long before the data interval or after it still belong to the batch",
    )

    @field_validator("event_time_timezone")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        import zoneinfo

        if v is not None:
            try:
                zoneinfo.ZoneInfo(v)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r}; use an IANA name such as UTC or America/New_York") from None
        return v


class RetryConfig(_Frozen):
    retries: int = Field(default=2, ge=0)
    retry_delay_seconds: int = Field(default=60, gt=0)
    max_retry_delay_seconds: int = Field(default=900, gt=0)


class TolerationConfig(_Frozen):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class TrainingConfig(_Frozen):
    """How and where training runs: a Kubernetes GPU pod, or a local process when no cluster is set up."""

    window_days: int = Field(default=28, ge=2, description="most recent feature partitions per training run")
    #: when new features land (a ``schedule`` run): ``always`` retrain, or only ``until_champion`` exists;
    #: after that, retraining waits for drift (or a manual run)
    on_new_features: Literal["always", "until_champion"] = "always"
    min_partitions: int = Field(default=5, ge=2)
    max_epochs: int = Field(default=40, ge=1)
    seed: int = DEFAULT_SEED
    image: str = "ghcr.io/airloop/train:0.1.0"
    namespace: str = "ml-training"
    kubernetes_conn_id: str = KUBERNETES_CONN_ID
    gpus: int = Field(default=1, ge=0)
    cpu: str = "4"
    memory: str = "16Gi"
    node_selector: dict[str, str] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: tuple[TolerationConfig, ...] = (TolerationConfig(key="nvidia.com/gpu", effect="NoSchedule"),)
    mlflow_tracking_uri: str = "http://mlflow.mlflow.svc.cluster.local:5000"
    mlflow_secret: str = "mlflow-credentials"
    startup_timeout_seconds: int = Field(default=900, ge=60, description="long enough for a GPU node to scale up")
    service_account: str = "airloop-training"


class GateConfig(_Frozen):
    """Champion/challenger thresholds (used by the training stage). ``min_metric`` is the floor of a
    higher-is-better metric, the ceiling of a lower-is-better one (rmse, mae, log_loss)."""

    metric: str = "roc_auc"
    min_metric: float = 0.6
    max_regression: float = Field(default=0.01, ge=0)


class CanaryConfig(_Frozen):
    """Canary steps and limits (used by the deployment stage)."""

    steps: tuple[int, ...] = (10, 25, 50, 100)
    max_5xx_rate: float = 0.02
    max_p99_latency_ratio: float = 2.0
    latency_min_tail_requests: int = Field(
        default=10,
        ge=0,
        description="requests the judged latency quantile must leave above it: a step with fewer "
        "than this / (1 - 0.99) requests is judged at a lower quantile than p99 (0: always p99)",
    )
    max_prediction_psi: float = 0.25
    max_online_metric_drop: float = Field(
        default=0.03,
        ge=0,
        description="how much worse the challenger's online metric may be, in the metric's units (e.g. 0.03 ROC AUC)",
    )
    max_online_metric_drop_ratio: float | None = Field(
        default=None,
        gt=0,
        description="instead, how much worse as a share of the champion's value (0.1: 10 %); "
        "for metrics in the target's units (rmse, mae), whose scale differs per model",
    )
    min_requests: int = Field(default=200, ge=1, description="challenger requests a step needs before judging")
    interval_seconds: int = Field(default=300, ge=1, description="least time a step runs before judging")
    deadline_minutes: int = Field(default=240, ge=1, description="a rollout still holding then is rolled back")
    poke_seconds: int = Field(
        default=30,
        ge=5,
        description="how often the deploy DAG's sensor looks (in the triggerer, or between reschedules); "
        "at least 5 s, below which Airflow can fail a rescheduled sensor (README, design notes)",
    )

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or list(v) != sorted(set(v)) or v[-1] != 100 or v[0] <= 0:
            raise ValueError("steps must rise strictly from above 0 to 100, e.g. [10, 25, 50, 100]")
        return v


class DeploymentConfig(_Frozen):
    """Where the model is served: the project's model server (``local``) or a KServe InferenceService."""

    target: str = Field(
        default="local",
        pattern=r"^[a-z][a-z0-9_]{0,62}$",
        description="the registered name of the serving target (operators/targets): local, kserve, or one added "
        "with @register_target; an unknown name fails when the deploy DAG builds the target",
    )
    #: local: the model server's address comes from this Airflow connection (the stack sets one per
    #: model); default ``airloop_model_server_<model>``
    model_server_conn_id: str | None = None
    #: local: the columns that identify an outcome (sent with each request and kept in the prediction
    #: log), and the raw partition that holds it; the canary's online metric joins logged predictions
    #: with outcomes that have been ingested. Empty: no online metric.
    outcome_key: tuple[str, ...] = ()
    outcome_partition: str = Field(
        default="", description="format string over outcome_key, e.g. ds={year:04d}-{month:02d}-{day:02d}"
    )
    #: local: what the model server accepts. Scoring is open (no token), so it is bounded: a token bucket
    #: per server, a body and row limit per request, and every value checked before it is scored or logged.
    check_inputs: Literal["schema", "suite"] = Field(
        default="suite",
        description="schema: each value has its column's declared type and is a finite number within "
        "max_abs_input; suite: also the ranges, value sets and not-null rules of the model's expectation "
        "suite (those without 'mostly'), so a request the gate would refuse is refused with a 400",
    )
    max_rows_per_request: int = Field(default=1000, ge=1, description="more rows in one request: 413")
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="larger bodies: 413")
    max_abs_input: float = Field(
        default=float(2**53),
        gt=0,
        description="numbers of larger magnitude are refused (400): 2^53, the limit of exact integers in "
        "JSON (RFC 8259, section 6); near the float limit (1e308) a model's arithmetic overflows to NaN",
    )
    max_requests_per_second: float | None = Field(
        default=1000.0, gt=0, description="scoring requests per second, sustained (429 above); null: unbounded"
    )
    burst_requests: int = Field(default=2000, ge=1, description="scoring requests allowed at once above that rate")
    #: kserve: the InferenceService, the cluster connection and where Prometheus answers
    namespace: str = "ml-serving"
    service_name: str | None = Field(
        default=None, description="InferenceService name; default: the model name with '-'"
    )
    kubernetes_conn_id: str = KUBERNETES_CONN_ID
    prometheus_conn_id: str = "prometheus_default"
    service_account: str = "airloop-serving"
    cpu: str = "1"
    memory: str = "2Gi"
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)


class DriftConfig(_Frozen):
    """Drift check schedule and thresholds (used by the drift stage)."""

    cron: str = "@daily"
    num_method: str = Field(default="wasserstein", description="Evidently stattest for numeric columns")
    cat_method: str = Field(default="jensenshannon", description="Evidently stattest for categorical columns")
    column_threshold: float = Field(default=0.1, gt=0, description="a column drifts when its score reaches this")
    column_thresholds: dict[str, float] = Field(default_factory=dict, description="per-column overrides")
    drift_share: float = Field(
        default=0.5, gt=0, le=1, description="the dataset drifts when this share of features drift"
    )
    sample_rows: int = Field(
        default=5000, ge=100, description="rows compared per side (seeded sample of larger windows)"
    )
    seed: int = DEFAULT_SEED
    min_rows: int = Field(default=200, ge=1, description="fewer predictions in the interval: no verdict")
    cooldown_hours: int = Field(default=24, ge=0, description="at most one drift-triggered retraining in this time")
    sensor_timeout_minutes: int = Field(default=60, ge=1, description="the drift sensor gives up (skips) after this")

    def threshold(self, column: str) -> float:
        return self.column_thresholds.get(column, self.column_threshold)


class WebhookSourceConfig(_Frozen):
    """One webhook source: a route ``/airloop/webhooks/<name>`` that turns a signed delivery into a DAG run."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="the route segment; unique across models")
    scheme: Literal["github", "standard"] = Field(description="signature scheme: GitHub-style or Standard Webhooks")
    connection_id: str = Field(
        description="Airflow connection: password = the secret; extra previous_secrets = older ones during a rotation"
    )
    payload: Literal["batch_landed"] = "batch_landed"
    dag: Literal["ingest"] = Field(default="ingest", description="the verb of the DAG a delivery starts")
    max_body_bytes: int = Field(default=65536, ge=64, description="larger bodies are refused with 413")
    tolerance_seconds: int = Field(default=300, ge=1, description="standard scheme: the most a timestamp may be off")
    #: where a delivery's ``source_uri`` may point; empty: the model's landing zone under the data root.
    #: Checked resolved (symlinks followed), with the protocols of the model's ``source.protocols``
    allowed_prefixes: tuple[str, ...] = ()

    @field_validator("allowed_prefixes")
    @classmethod
    def _usable_prefixes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from airloop.confine import UriRejected, check_prefix

        for prefix in v:
            try:
                check_prefix(prefix)
            except UriRejected as e:
                raise ValueError(f"{prefix!r}: {e}") from None
        return v


class AlertsConfig(_Frozen):
    """Where on-call alerts go: the local alert log always, Slack and an HTTP webhook when configured."""

    channels: tuple[Literal["log", "slack", "http"], ...] = ("log",)
    slack_conn_id: str = Field(
        default="slack_alerts", description="a Slack incoming-webhook connection (Slack provider)"
    )
    slack_channel: str | None = None
    http_conn_id: str = Field(
        default="airloop_alerts_http", description="an HTTP connection; alerts are POSTed as JSON"
    )

    @field_validator("channels")
    @classmethod
    def _some_channel(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("name at least one channel (log is the local default)")
        return v


class PipelineConfig(_Frozen):
    name: str
    description: str
    owner: str = "airloop"
    tags: tuple[str, ...] = ()
    task: TaskConfig
    source: SourceConfig
    schedule: ScheduleConfig
    data_schema: SchemaConfig = Field(alias="schema")
    validation: ValidationConfig
    retries: RetryConfig = RetryConfig()
    features: FeaturesConfig
    training: TrainingConfig = TrainingConfig()
    gate: GateConfig = GateConfig()
    canary: CanaryConfig = CanaryConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    drift: DriftConfig = DriftConfig()
    webhooks: tuple[WebhookSourceConfig, ...] = ()
    alerts: AlertsConfig = AlertsConfig()

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    #: the folder of the YAML file the config was loaded from (suites and feature modules resolve there)
    _folder: Path | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must be lower_snake_case (it becomes part of DAG ids and paths)")
        return v

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> PipelineConfig:
        cols = self.data_schema.columns
        src = self.task.label.source_column
        if src not in cols:
            raise ValueError(f"task.label.source_column {src!r} is not in schema.columns")
        if src not in self.data_schema.leakage_columns:
            raise ValueError("task.label.source_column must be listed in schema.leakage_columns")
        inputs = input_columns(self.features)
        unknown = [c for c in inputs if c not in cols]
        if unknown:
            raise ValueError(f"features read columns that are not in schema.columns: {unknown}")
        leaks = sorted(set(inputs) & set(self.data_schema.leakage_columns))
        if leaks:
            raise ValueError(f"features read columns that leak the outcome (schema.leakage_columns): {leaks}")
        metrics = GATE_METRICS[self.task.type]
        if self.gate.metric not in metrics:
            raise ValueError(
                f"gate.metric {self.gate.metric!r} does not fit task.type {self.task.type}; use one of "
                f"{sorted(metrics)}"
            )
        d = self.deployment
        unknown = [c for c in d.outcome_key if c not in cols]
        if unknown:
            raise ValueError(f"deployment.outcome_key names columns not in schema.columns: {unknown}")
        if d.outcome_partition:
            fields = {f for _, f, _, _ in string.Formatter().parse(d.outcome_partition) if f}
            if not d.outcome_key or not fields <= set(d.outcome_key):
                raise ValueError(
                    f"deployment.outcome_partition uses {sorted(fields)}, which must be outcome_key "
                    f"columns ({list(d.outcome_key)})"
                )
        known = {*feature_columns(self.features), "prediction"}
        stray = sorted(set(self.drift.column_thresholds) - known)
        if stray:
            raise ValueError(
                f"drift.column_thresholds names {stray}, which are neither features nor 'prediction'; "
                f"features: {sorted(known - {'prediction'})}"
            )
        names = [w.name for w in self.webhooks]
        if len(set(names)) != len(names):
            raise ValueError(f"webhooks: source names must be unique, got {names}")
        folder = (info.context or {}).get("folder") if info else None
        if folder is not None and resolve_suite(Path(folder), self.validation.suite) is None:
            raise ValueError(
                f"validation.suite {self.validation.suite!r} not found next to the YAML ({folder}) "
                f"nor in {Path(folder).parent / 'expectations'} or {EXPECTATIONS_DIR}"
            )
        return self

    def dag_id(self, verb: str) -> str:
        return f"{self.name}__{verb}"

    def asset_name(self, stage: str) -> str:
        return f"{self.name}.{stage}"

    @property
    def folder(self) -> Path:
        """The folder of this config's YAML (where suites and feature modules are looked up first)."""
        return self._folder or pipelines_dir()

    @property
    def suite_path(self) -> Path:
        found = resolve_suite(self.folder, self.validation.suite)
        if found is None:
            raise ConfigError(f"{self.name}: validation.suite {self.validation.suite!r} not found")
        return found

    @property
    def model_server_conn_id(self) -> str:
        """The Airflow connection of this model's server (``deployment.model_server_conn_id``)."""
        return self.deployment.model_server_conn_id or f"airloop_model_server_{self.name}"

    @property
    def request_columns(self) -> list[str]:
        """The columns a scoring request (and a batch) must carry for the features to be computed."""
        return input_columns(self.features)

    @property
    def feature_search_dirs(self) -> list[Path]:
        """Where a ``features.module`` that is not an installed package is looked up."""
        return [self.folder]

    @property
    def event_time(self) -> str | None:
        return self.data_schema.event_time


def suite_folders(folder: Path) -> list[Path]:
    """Where a model's suite is looked up, in order: next to the YAML, ``expectations/`` beside the
    pipelines folder, the package's own expectations folder."""
    return list(dict.fromkeys([folder, folder.parent / "expectations", EXPECTATIONS_DIR]))


def resolve_suite(folder: Path, suite: str) -> Path | None:
    for d in suite_folders(folder):
        if (d / suite).is_file():
            return d / suite
    return None


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid pipeline config ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {json.dumps(got, default=str)})"
        lines.append(f"  - field '{loc}': {msg}{shown}")
    return "\n".join(lines)


def load_pipeline_config(path: str | os.PathLike[str]) -> PipelineConfig:
    """Load and validate one pipeline config file.

    :param path: the YAML file
    :raises ConfigError: naming the file and each bad field
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{p}: pipeline config not found") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a pipeline config must be a mapping of fields, got {type(raw).__name__}")
    try:
        cfg = PipelineConfig.model_validate(raw, context={"folder": p.resolve().parent})
    except ValidationError as e:
        raise ConfigError(_format_errors(p, e)) from None
    cfg._folder = p.resolve().parent
    if cfg.name != p.stem:
        raise ConfigError(f"{p}: field 'name' is {cfg.name!r} but the file is named {p.stem!r}; make them equal")
    return cfg


def pipelines_dir() -> Path:
    """The folder holding pipeline configs (``AIRLOOP_PIPELINES_DIR`` overrides it, e.g. in tests)."""
    return Path(os.environ.get("AIRLOOP_PIPELINES_DIR", PIPELINES_DIR))


@functools.lru_cache(maxsize=8)
def _load_all_cached(
    folder: str, stamp: tuple[tuple[str, float], ...]
) -> tuple[tuple[PipelineConfig, ...], dict[str, str]]:
    configs, errors = [], {}
    for name, _ in stamp:
        try:
            configs.append(load_pipeline_config(Path(folder) / name))
        except ConfigError as e:
            errors[str(Path(folder) / name)] = str(e)
    return tuple(configs), errors


def load_pipelines(folder: str | os.PathLike[str] | None = None) -> tuple[tuple[PipelineConfig, ...], dict[str, str]]:
    """Every valid pipeline config in ``folder`` (sorted by file name), and the error of each broken
    file by path: one broken YAML never hides the other models. Cached until a file changes."""
    d = Path(folder) if folder is not None else pipelines_dir()
    files = sorted(d.glob("*.yaml"))
    stamp = tuple((f.name, f.stat().st_mtime) for f in files)
    return _load_all_cached(str(d), stamp)


def load_all_pipelines(folder: str | os.PathLike[str] | None = None) -> tuple[PipelineConfig, ...]:
    """Every valid pipeline config in ``folder``, sorted by name (broken files are left out: see
    :func:`load_pipelines` for their errors)."""
    return load_pipelines(folder)[0]


def get_pipeline(name: str, folder: str | os.PathLike[str] | None = None) -> PipelineConfig:
    """The config of one model by name."""
    configs, errors = load_pipelines(folder)
    for cfg in configs:
        if cfg.name == name:
            return cfg
    for path, error in errors.items():
        if Path(path).stem == name:
            raise ConfigError(error)
    raise ConfigError(f"no pipeline config named {name!r}; known models: {[c.name for c in configs]}")


def find_webhook_source(
    name: str, folder: str | os.PathLike[str] | None = None
) -> tuple[PipelineConfig, WebhookSourceConfig] | None:
    """The model and webhook source configured under ``name``, or None."""
    for cfg in load_all_pipelines(folder):
        for source in cfg.webhooks:
            if source.name == name:
                return cfg, source
    return None
