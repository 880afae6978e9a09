"""Training entrypoint: ``python -m airloop.training.train`` (the same command in a Kubernetes pod and locally).

Steps: reuse the version a previous try registered -> read the window (train, validation, holdout) -> fit
(:mod:`airloop.training.trainer`) -> evaluate on the holdout -> package the pyfunc and its drift reference
(:mod:`airloop.training.packaging`) -> register exactly one model version per training run key. Everything is
logged to one MLflow run (parameters, per-epoch metrics, lineage tags).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airloop.training.request import TrainRequest

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from airloop.config import PipelineConfig
    from airloop.storage import DataRoot
    from airloop.training.trainer import Fitted

log = logging.getLogger("airloop.training")

RUN_KEY_TAG = "airloop_run_key"
RESULT_TAG = "airloop_result"


@dataclass(frozen=True)
class Window:
    """The rows of one training run: train and validation (time-ordered) and the holdout days."""

    train_partitions: tuple[str, ...]
    holdout_partitions: tuple[str, ...]
    train: pd.DataFrame
    val: pd.DataFrame
    holdout: pd.DataFrame


def split_partitions(partitions: tuple[str, ...], holdout_fraction: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The last partitions (by key, i.e. by date) are the holdout; the rest is for training."""
    parts = tuple(sorted(partitions))
    if len(parts) < 2:
        raise ValueError(f"training needs at least 2 partitions (got {len(parts)}): one for the holdout")
    k = max(1, round(len(parts) * holdout_fraction))
    return parts[:-k], parts[-k:]


def split_validation(
    feats: pd.DataFrame, target: str, val_fraction: float, event_time: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows with a known target, in time order (the partition, then ``event_time`` within it when the
    model has one): the last ``val_fraction`` of them are the validation split.

    :returns: (train rows, validation rows)
    """
    from airloop.datasets import PARTITION_COLUMN

    order = [event_time, PARTITION_COLUMN] if event_time and event_time in feats.columns else [PARTITION_COLUMN]
    feats = feats[feats[target].notna()].sort_values(order, kind="stable").reset_index(drop=True)
    n_val = max(1, int(len(feats) * val_fraction))
    return feats.iloc[:-n_val], feats.iloc[-n_val:]


def read_window(req: TrainRequest, cfg: PipelineConfig, root: DataRoot) -> Window:
    """The feature partitions of the request, split into train, validation and holdout."""
    from airloop.datasets import load_partitions

    target = cfg.task.target
    train_parts, holdout_parts = split_partitions(req.partitions, req.holdout_fraction)
    train_df, val_df = split_validation(
        load_partitions(root, "features", cfg.name, train_parts), target, req.val_fraction, cfg.event_time
    )
    holdout = load_partitions(root, "features", cfg.name, holdout_parts)
    return Window(train_parts, holdout_parts, train_df, val_df, holdout[holdout[target].notna()])


def run_tags(req: TrainRequest, cfg: PipelineConfig, root: DataRoot, window: Window, features: str) -> dict[str, str]:
    """Lineage: the run key, the feature version, which days trained and which judged, each day's content
    hash and the validation gate's verdict on exactly that content."""
    from airloop.storage import MANIFEST

    tags = {
        **req.lineage,
        RUN_KEY_TAG: req.run_key,
        "airloop.model": cfg.name,
        "airloop.feature_version": features,
        "airloop.train_partitions": ",".join(window.train_partitions),
        "airloop.holdout_partitions": ",".join(window.holdout_partitions),
    }
    for p in req.partitions:
        manifest = root.read_json(f"{root.features(cfg.name, p)}/{MANIFEST}")
        tags[f"airloop.partition.{p}"] = str(manifest.get("source_content_hash"))
        result_uri = root.validation_result(cfg.name, p)
        if root.exists(result_uri):
            v = root.read_json(result_uri)
            st = v.get("statistics", {})
            tags[f"airloop.validation.{p}"] = (
                f"{'passed' if v.get('success') else 'FAILED'} {st.get('successful_expectations')}/"
                f"{st.get('evaluated_expectations')} (suite {v.get('suite')}, content {v.get('content_hash')})"
            )
    return tags


def run_params(req: TrainRequest, cfg: PipelineConfig, window: Window) -> dict[str, Any]:
    from airloop.features import feature_columns

    return {
        "task": cfg.task.type,
        "target": cfg.task.target,
        "seed": req.seed,
        "max_epochs": req.max_epochs,
        "patience": req.patience,
        "batch_size": req.batch_size,
        "learning_rate": req.learning_rate,
        "hidden": list(req.hidden),
        "dropout": req.dropout,
        "linear_start": req.linear_start,
        "linear_c": req.linear_c,
        "piecewise": list(cfg.features.piecewise),
        "piecewise_bins": cfg.features.piecewise_bins,
        "features": ",".join(feature_columns(cfg.features))[:6000],
        "train_rows": len(window.train),
        "val_rows": len(window.val),
        "holdout_rows": len(window.holdout),
        "partitions": len(req.partitions),
    }


def log_epoch(row: dict[str, float]) -> None:
    """Log one validation epoch's figures to the active MLflow run, at step = epoch."""
    import mlflow

    mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def evaluate(cfg: PipelineConfig, fitted: Fitted, window: Window) -> dict[str, float]:
    """The holdout metrics, logged with the run's throughput and linear-start figures."""
    import mlflow

    from airloop.metrics import metrics_for
    from airloop.training.trainer import predict

    task = cfg.task.type
    hold = metrics_for(task, window.holdout[cfg.task.target], predict(fitted.net, fitted.pre, window.holdout, task))
    mlflow.log_metrics({f"holdout_{k}": v for k, v in hold.items() if not math.isnan(v)})
    start = {f"linear_start_{k}": v for k, v in fitted.linear_start_val.items() if not math.isnan(v)}
    figures = {"best_epoch": fitted.best_epoch, "linear_seconds": fitted.linear_seconds, **start}
    mlflow.log_metrics({"samples_per_s": fitted.samples_per_s, **figures})
    mlflow.set_tag("airloop.device", fitted.device)
    return hold


def train(req: TrainRequest) -> dict[str, Any]:
    """Train, log and register; return a small JSON-safe result (the task's XCom)."""
    import mlflow
    from mlflow import MlflowClient

    from airloop.config import get_pipeline
    from airloop.datasets import load_partitions
    from airloop.features import feature_version
    from airloop.storage import DataRoot
    from airloop.training import packaging
    from airloop.training.trainer import fit

    cfg, root = get_pipeline(req.model), DataRoot(req.data_root)
    mlflow.set_tracking_uri(req.tracking_uri)
    client = MlflowClient(req.tracking_uri)
    done = previous_result(client, cfg.name, req.run_key)
    if done is not None:
        return done
    window = read_window(req, cfg, root)
    exp_id = ensure_experiment(client, f"airloop-{cfg.name}", artifact_root(req, root, cfg.name))
    features = feature_version(cfg.features, cfg.feature_search_dirs)
    tags = run_tags(req, cfg, root, window, features)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{cfg.name}-{req.run_key}", tags=tags) as run:
        mlflow.log_params(run_params(req, cfg, window))
        fitted = fit(req, cfg.task.type, window.train, window.val, cfg.task.target, cfg.features, on_epoch=log_epoch)
        hold = evaluate(cfg, fitted, window)
        example = packaging.input_example(cfg, load_partitions(root, "raw", cfg.name, window.holdout_partitions[:1]))
        reference = packaging.reference_sample(cfg, window.train, fitted, req.seed)
        info = packaging.log_model(cfg, req, fitted, example, reference, features)
        version = register_once(client, cfg.name, info.model_uri, run.info.run_id, req.run_key, info.model_id)
        out = result(cfg.name, version, run.info.run_id, exp_id, window, fitted, hold)
        client.set_tag(run.info.run_id, RESULT_TAG, json.dumps(out))
    log.info("trained %s v%s on %s (holdout %s)", cfg.name, version.version, fitted.device, hold)
    return out


def result(
    model: str, version: ModelVersion, run_id: str, exp_id: str, window: Window, fitted: Fitted, hold: dict[str, float]
) -> dict[str, Any]:
    """The run's small JSON-safe result (the task's XCom, also kept as a tag for a retried task)."""
    return {
        "model": model,
        "version": str(version.version),
        "run_id": run_id,
        "model_uri": f"models:/{model}/{version.version}",
        "metrics": {k: v for k, v in hold.items() if not math.isnan(v)},
        "holdout_partitions": list(window.holdout_partitions),
        "train_partitions": list(window.train_partitions),
        "device": fitted.device,
        "samples_per_s": round(fitted.samples_per_s, 1),
        "best_epoch": fitted.best_epoch,
        "experiment_id": exp_id,
    }


# -- MLflow: experiment and registry -----------------------------------------------------------------


def artifact_root(req: TrainRequest, root: DataRoot, model: str) -> str | None:
    """Where a local tracking store keeps the model's artifacts (in the data root); a server decides itself."""
    if req.tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    return root.file_uri(root.mlflow_artifacts(model))


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    return client.create_experiment(name, artifact_location=artifact_location)


def previous_result(client: MlflowClient, model: str, run_key: str) -> dict[str, Any] | None:
    """The result of a previous try of this run key, when it registered a version already (retry safety)."""
    existing = find_registered(client, model, run_key) if registered_model_exists(client, model) else None
    if existing is None or not existing.run_id:
        return None
    log.info("run key %s already registered as %s v%s; not training again", run_key, model, existing.version)
    tagged: dict[str, Any] = json.loads(client.get_run(existing.run_id).data.tags.get(RESULT_TAG, "{}"))
    return tagged or {"model": model, "version": existing.version, "run_id": existing.run_id}


def find_registered(client: MlflowClient, model: str, run_key: str) -> ModelVersion | None:
    """The model version already registered for this training run key, if any (retry safety)."""
    found = client.search_model_versions(f"name = '{model}' and tags.{RUN_KEY_TAG} = '{run_key}'")
    return sorted(found, key=lambda v: int(v.version))[0] if found else None


def registered_model_exists(client: MlflowClient, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


def register_once(
    client: MlflowClient, name: str, source: str, run_id: str, run_key: str, model_id: str | None = None
) -> ModelVersion:
    """Create the model version for this run key, or return the one a previous try created."""
    from mlflow.exceptions import MlflowException

    if not registered_model_exists(client, name):
        try:
            client.create_registered_model(name, description=f"airloop model {name}")
        except MlflowException:
            pass  # created concurrently
    existing = find_registered(client, name, run_key)
    if existing is not None:
        return existing
    # model_id: a tracking server requires it to resolve a models:/m-... source (a database store does not)
    return client.create_model_version(
        name, source=source, run_id=run_id, tags={RUN_KEY_TAG: run_key}, model_id=model_id
    )


# -- the command -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[TrainRequest, str]:
    """The request and the result file of a command line (defaults: :class:`TrainRequest`'s)."""
    ap = argparse.ArgumentParser(description="Train, log to MLflow and register one model version")
    ap.add_argument("--model", required=True, help="the pipeline config's name")
    ap.add_argument("--data-root", required=True, help="the data root (a folder or an fsspec URI)")
    ap.add_argument("--partitions", required=True, help="comma-separated feature partitions, e.g. ds=2013-01-01,...")
    ap.add_argument("--run-key", required=True, help="one model version per key (use <dag_id>/<run_id>)")
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", ""), help="the MLflow store")
    ap.add_argument("--lineage", default="{}", help="JSON object of lineage tags")
    ap.add_argument("--seed", type=int, default=TrainRequest.seed, help="the seed of every random draw")
    ap.add_argument("--max-epochs", type=int, default=TrainRequest.max_epochs, help="the most epochs of training")
    ap.add_argument("--device", default=TrainRequest.device, help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--result-file", default="", help="write the result JSON here (/airflow/xcom/return.json in a pod)")
    args = ap.parse_args(argv)
    if not args.tracking_uri:
        ap.error("no MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    req = TrainRequest(
        model=args.model,
        data_root=args.data_root,
        partitions=tuple(p for p in args.partitions.split(",") if p),
        run_key=args.run_key,
        tracking_uri=args.tracking_uri,
        lineage=json.loads(args.lineage),
        seed=args.seed,
        max_epochs=args.max_epochs,
        device=args.device,
    )
    return req, args.result_file


def main(argv: list[str] | None = None) -> int:
    req, result_file = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = train(req)
    if result_file:
        Path(result_file).parent.mkdir(parents=True, exist_ok=True)
        Path(result_file).write_text(json.dumps(out))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
