"""Packaging a trained net as one MLflow pyfunc: its files, signature, input example and drift reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models.model import ModelInfo

    from airloop.config import PipelineConfig
    from airloop.training.request import TrainRequest
    from airloop.training.trainer import Fitted

#: rows of the training split kept as the drift check's reference
REFERENCE_ROWS = 5000
#: where the reference sample lies among the run's artifacts
REFERENCE_FOLDER = "reference"
#: the prediction histogram's interior bounds: the deciles of the model's own reference predictions
PREDICTION_QUANTILES = tuple(i / 10 for i in range(1, 10))


def prediction_edges(predictions: Any) -> list[float]:
    """Sorted, distinct interior bucket bounds of a model's prediction histogram (the canary's PSI), taken
    from its reference predictions, so the histogram fits the model's output scale."""
    import numpy as np

    values = np.asarray(predictions, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return []
    return sorted({float(q) for q in np.quantile(values, PREDICTION_QUANTILES)})


def input_example(cfg: PipelineConfig, raw: pd.DataFrame) -> pd.DataFrame:
    """Five request rows of a raw batch (complete ones when there are), the logged model's input example.

    Their types give the signature: ints where the pipeline declares int (never null after the gate),
    doubles where it declares float (nullable)."""
    example = raw[cfg.request_columns].dropna().head(5).reset_index(drop=True)
    if example.empty:
        example = raw[cfg.request_columns].head(5).reset_index(drop=True)
    return example


def reference_sample(cfg: PipelineConfig, train_df: pd.DataFrame, fitted: Fitted, seed: int) -> pd.DataFrame:
    """A seeded sample of the training rows (features, target) with the model's predictions, for drift checks."""
    from airloop.features import feature_columns
    from airloop.training.trainer import predict

    ref = train_df.sample(n=min(REFERENCE_ROWS, len(train_df)), random_state=seed)[
        [*feature_columns(cfg.features), cfg.task.target]
    ]
    return ref.assign(prediction=predict(fitted.net, fitted.pre, ref, cfg.task.type))


def model_artifacts(
    folder: str, cfg: PipelineConfig, fitted: Fitted, req: TrainRequest, version_of_features: str, edges: list[float]
) -> dict[str, str]:
    """Write the files the pyfunc loads: weights, preprocessor, feature definition and metadata."""
    import torch

    paths = {
        "weights": f"{folder}/weights.pt",
        "preprocessor": f"{folder}/preprocessor.json",
        "features": f"{folder}/features.json",
        "meta": f"{folder}/meta.json",
    }
    torch.save(fitted.net.state_dict(), paths["weights"])
    Path(paths["preprocessor"]).write_text(fitted.pre.to_json())
    Path(paths["features"]).write_text(cfg.features.model_dump_json())
    meta = {
        "task": cfg.task.type,
        "hidden": list(req.hidden),
        "dropout": req.dropout,
        "feature_version": version_of_features,
        "request_columns": cfg.request_columns,
        "event_time": cfg.event_time,
        "prediction_edges": edges,
        "target_scale": list(fitted.target_scale),
    }
    Path(paths["meta"]).write_text(json.dumps(meta))
    return paths


def model_code_paths(cfg: PipelineConfig) -> list[str]:
    """The code the logged model imports: the ``airloop`` package, and a ``features.module`` file that
    lives in the pipelines folder rather than in an installed package."""
    from airloop.features import module_file

    paths = [str(Path(__file__).resolve().parents[1])]
    if cfg.features.module:
        f = module_file(cfg.features.module, cfg.feature_search_dirs)
        if f is not None and any(f.resolve().is_relative_to(Path(d).resolve()) for d in cfg.feature_search_dirs):
            paths.append(str(f))
    return paths


def log_model(
    cfg: PipelineConfig,
    req: TrainRequest,
    fitted: Fitted,
    example: pd.DataFrame,
    reference: pd.DataFrame,
    version_of_features: str,
) -> ModelInfo:
    """Log the pyfunc (signature from ``example``) and the reference sample to the active MLflow run."""
    import tempfile

    import mlflow
    import torch
    from mlflow.models import infer_signature

    from airloop.training.model import make_pyfunc_class

    with tempfile.TemporaryDirectory() as tmp:
        edges = prediction_edges(reference["prediction"])
        paths = model_artifacts(tmp, cfg, fitted, req, version_of_features, edges)
        pyfunc: Any = make_pyfunc_class()()  # Any: MLflow leaves PythonModel's methods unannotated
        pyfunc.load_context(type("Ctx", (), {"artifacts": paths})())
        info: ModelInfo = mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc,
            artifacts=paths,
            signature=infer_signature(example, pyfunc.predict(None, example)),
            input_example=example,
            code_paths=model_code_paths(cfg),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "pandas<3"],
        )
        ref_path = f"{tmp}/reference_sample.parquet"
        reference.to_parquet(ref_path, index=False)
        mlflow.log_artifact(ref_path, artifact_path=REFERENCE_FOLDER)
    return info
