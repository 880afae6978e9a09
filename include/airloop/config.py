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
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from airloop.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
PIPELINES_DIR = PACKAGE_DIR / "pipelines"
EXPECTATIONS_DIR = PACKAGE_DIR / "expectations"

ColumnType = Literal["int", "float", "string", "timestamp", "bool"]
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LabelConfig(_Frozen):
    """How the target is derived from a source column that is known only after the outcome."""

    source_column: str
    positive_above: float | None = Field(
        default=None, description="binary classification: label = source_column > positive_above"
    )


class TaskConfig(_Frozen):
    type: Literal["binary_classification", "regression"]
    target: str
    label: LabelConfig

    @model_validator(mode="after")
    def _label_fits_task(self) -> TaskConfig:
        if self.type == "binary_classification" and self.label.positive_above is None:
            raise ValueError("label.positive_above is required for binary_classification")
        return self


class SourceConfig(_Frozen):
    """Where batches come from. ``kind`` picks the adapter that fills the landing area."""

    kind: Literal["nycflights13_replay", "files"]
    format: Literal["csv", "parquet", "jsonl"] = "csv"
    file_name: str = "batch.csv"
    max_bytes: int = Field(default=512 * 1024 * 1024, gt=0)


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
    partition_column: str | None = None
    leakage_columns: tuple[str, ...] = Field(
        default=(), description="known only after the outcome: label source only, never a feature"
    )

    @model_validator(mode="after")
    def _columns_known(self) -> SchemaConfig:
        for field_name in ("timestamp_columns", "leakage_columns"):
            unknown = [c for c in getattr(self, field_name) if c not in self.columns]
            if unknown:
                raise ValueError(f"{field_name} names columns not in schema.columns: {unknown}")
        return self


class ValidationConfig(_Frozen):
    suite: str = Field(description="expectation suite file, relative to include/airloop/expectations/")
    min_rows: int = Field(default=1, ge=0)


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
    seed: int = 13
    image: str = "ghcr.io/airloop/train:0.1.0"
    namespace: str = "ml-training"
    kubernetes_conn_id: str = "kubernetes_default"
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
    """Champion/challenger thresholds (used by the training stage)."""

    metric: str = "roc_auc"
    min_metric: float = 0.6
    max_regression: float = 0.01


class CanaryConfig(_Frozen):
    """Canary steps and limits (used by the deployment stage)."""

    steps: tuple[int, ...] = (10, 25, 50, 100)
    max_5xx_rate: float = 0.02
    max_p99_latency_ratio: float = 2.0
    latency_min_tail_requests: int = Field(
        default=10, ge=0, description="requests the judged latency quantile must leave above it: a step with fewer "
        "than this / (1 - 0.99) requests is judged at a lower quantile than p99 (0: always p99)")
    max_prediction_psi: float = 0.25
    max_online_metric_drop: float = 0.03
    min_requests: int = Field(default=200, ge=1, description="challenger requests a step needs before judging")
    interval_seconds: int = Field(default=300, ge=1, description="least time a step runs before judging")
    deadline_minutes: int = Field(default=240, ge=1, description="a rollout still holding then is rolled back")
    poke_seconds: int = Field(default=30, ge=1, description="how often the deploy DAG's sensor looks (reschedule mode)")

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or list(v) != sorted(set(v)) or v[-1] != 100 or v[0] <= 0:
            raise ValueError("steps must rise strictly from above 0 to 100, e.g. [10, 25, 50, 100]")
        return v


class DeploymentConfig(_Frozen):
    """Where the model is served: the project's model server (``local``) or a KServe InferenceService."""

    target: Literal["local", "kserve"] = "local"
    #: local: the model server's address comes from this Airflow connection (the stack sets it)
    model_server_conn_id: str = "airloop_model_server"
    #: local: the columns that identify an outcome (sent with each request and kept in the prediction
    #: log), and the raw partition that holds it; the canary's online metric joins logged predictions
    #: with outcomes that have been ingested. Empty: no online metric.
    outcome_key: tuple[str, ...] = ()
    outcome_partition: str = Field(default="", description="format string over outcome_key, e.g. ds={year:04d}-{month:02d}-{day:02d}")
    #: kserve: the InferenceService, the cluster connection and where Prometheus answers
    namespace: str = "ml-serving"
    service_name: str | None = Field(default=None, description="InferenceService name; default: the model name with '-'")
    kubernetes_conn_id: str = "kubernetes_default"
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
    drift_share: float = Field(default=0.5, gt=0, le=1, description="the dataset drifts when this share of features drift")
    sample_rows: int = Field(default=5000, ge=100, description="rows compared per side (seeded sample of larger windows)")
    seed: int = 13
    min_rows: int = Field(default=200, ge=1, description="fewer predictions in the interval: no verdict")
    cooldown_hours: int = Field(default=24, ge=0, description="at most one drift-triggered retraining in this time")
    sensor_timeout_minutes: int = Field(default=60, ge=1, description="the drift sensor gives up (skips) after this")

    def threshold(self, column: str) -> float:
        return self.column_thresholds.get(column, self.column_threshold)


class WebhookSourceConfig(_Frozen):
    """One webhook source: a route ``/airloop/webhooks/<name>`` that turns a signed delivery into a DAG run."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="the route segment; unique across models")
    scheme: Literal["github", "standard"] = Field(description="signature scheme: GitHub-style or Standard Webhooks")
    connection_id: str = Field(description="Airflow connection: password = the secret; extra previous_secrets = older ones during a rotation")
    payload: Literal["batch_landed"] = "batch_landed"
    dag: Literal["ingest"] = Field(default="ingest", description="the verb of the DAG a delivery starts")
    max_body_bytes: int = Field(default=65536, ge=64, description="larger bodies are refused with 413")
    tolerance_seconds: int = Field(default=300, ge=1, description="standard scheme: the most a timestamp may be off")
    #: where a delivery's ``source_uri`` may point; empty: the model's landing zone under the data root
    allowed_prefixes: tuple[str, ...] = ()


class AlertsConfig(_Frozen):
    """Where on-call alerts go: the local alert log always, Slack and an HTTP webhook when configured."""

    channels: tuple[Literal["log", "slack", "http"], ...] = ("log",)
    slack_conn_id: str = Field(default="slack_alerts", description="a Slack incoming-webhook connection (Slack provider)")
    slack_channel: str | None = None
    http_conn_id: str = Field(default="airloop_alerts_http", description="an HTTP connection; alerts are POSTed as JSON")

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
    features: tuple[str, ...] = ()
    training: TrainingConfig = TrainingConfig()
    gate: GateConfig = GateConfig()
    canary: CanaryConfig = CanaryConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    drift: DriftConfig = DriftConfig()
    webhooks: tuple[WebhookSourceConfig, ...] = ()
    alerts: AlertsConfig = AlertsConfig()

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("must be lower_snake_case (it becomes part of DAG ids and paths)")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> PipelineConfig:
        cols = self.data_schema.columns
        if self.task.label.source_column not in cols:
            raise ValueError(f"task.label.source_column {self.task.label.source_column!r} is not in schema.columns")
        if self.task.label.source_column not in self.data_schema.leakage_columns:
            raise ValueError("task.label.source_column must be listed in schema.leakage_columns")
        leaks = sorted(set(self.features) & set(self.data_schema.leakage_columns))
        if leaks:
            raise ValueError(f"features use columns that leak the outcome: {leaks}")
        pc = self.data_schema.partition_column
        if pc is not None and pc not in cols:
            raise ValueError(f"schema.partition_column {pc!r} is not in schema.columns")
        if not (EXPECTATIONS_DIR / self.validation.suite).is_file():
            raise ValueError(f"validation.suite {self.validation.suite!r} not found in {EXPECTATIONS_DIR}")
        names = [w.name for w in self.webhooks]
        if len(set(names)) != len(names):
            raise ValueError(f"webhooks: source names must be unique, got {names}")
        return self

    def dag_id(self, verb: str) -> str:
        return f"{self.name}__{verb}"

    def asset_name(self, stage: str) -> str:
        return f"{self.name}.{stage}"

    @property
    def suite_path(self) -> Path:
        return EXPECTATIONS_DIR / self.validation.suite


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
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(p, e)) from None
    if cfg.name != p.stem:
        raise ConfigError(f"{p}: field 'name' is {cfg.name!r} but the file is named {p.stem!r}; make them equal")
    return cfg


def pipelines_dir() -> Path:
    """The folder holding pipeline configs (``AIRLOOP_PIPELINES_DIR`` overrides it, e.g. in tests)."""
    return Path(os.environ.get("AIRLOOP_PIPELINES_DIR", PIPELINES_DIR))


@functools.lru_cache(maxsize=8)
def _load_all_cached(folder: str, stamp: tuple[tuple[str, float], ...]) -> tuple[PipelineConfig, ...]:
    return tuple(load_pipeline_config(Path(folder) / name) for name, _ in stamp)


def load_all_pipelines(folder: str | os.PathLike[str] | None = None) -> tuple[PipelineConfig, ...]:
    """Every pipeline config in ``folder``, sorted by name; cached until a file changes."""
    d = Path(folder) if folder is not None else pipelines_dir()
    files = sorted(d.glob("*.yaml"))
    stamp = tuple((f.name, f.stat().st_mtime) for f in files)
    return _load_all_cached(str(d), stamp)


def get_pipeline(name: str, folder: str | os.PathLike[str] | None = None) -> PipelineConfig:
    """The config of one model by name."""
    for cfg in load_all_pipelines(folder):
        if cfg.name == name:
            return cfg
    known = [c.name for c in load_all_pipelines(folder)]
    raise ConfigError(f"no pipeline config named {name!r}; known models: {known}")


def find_webhook_source(name: str, folder: str | os.PathLike[str] | None = None) -> tuple[PipelineConfig, WebhookSourceConfig] | None:
    """The model and webhook source configured under ``name``, or None."""
    for cfg in load_all_pipelines(folder):
        for source in cfg.webhooks:
            if source.name == name:
                return cfg, source
    return None
