"""Training entrypoint: ``python -m airloop.training.train`` (the same command in a Kubernetes pod and locally).

Reads a window of feature partitions, trains a PyTorch wide-and-deep model for the config's task with early
stopping on a time-ordered validation split (the wide part starts from the L2-regularised linear solution,
so the first candidate is a linear model and training keeps only epochs that improve on it), logs
everything to MLflow (parameters, per-epoch metrics, the model as a pyfunc with signature, input example
and feature transform, a reference sample for drift checks, lineage tags) and registers exactly one model
version per training run key, even when the task is retried.

Deterministic: fixed seed, deterministic kernels, batches sliced from tensors in a seeded order. CUDA when
present (pinned memory, bf16 autocast), the CPU otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("airloop.training")

RUN_KEY_TAG = "airloop_run_key"
REFERENCE_ROWS = 5000


@dataclass(frozen=True)
class TrainRequest:
    model: str
    data_root: str
    partitions: tuple[str, ...]
    run_key: str
    tracking_uri: str
    lineage: dict[str, str] = field(default_factory=dict)
    seed: int = 13
    max_epochs: int = 40
    patience: int = 5
    batch_size: int = 1024
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    #: start the wide part from the L2-regularised linear solution (strength ``linear_c``, as scikit-learn's C)
    #: and the deep part's output at zero, so the starting model is that linear model
    linear_start: bool = True
    linear_c: float = 1.0
    hidden: tuple[int, ...] = (32,)
    dropout: float = 0.1
    refit: bool = True
    val_fraction: float = 0.15
    holdout_fraction: float = 0.2
    device: str = "auto"


def load_partitions(root: Any, zone: str, model: str, partitions: tuple[str, ...]):
    """Concatenate the given partitions of a zone (features: ``data/``; raw: ``data.parquet``)."""
    import pandas as pd

    from airloop.storage import MANIFEST

    frames = []
    for p in partitions:
        uri = root.partition_uri(zone, model, p)
        m = root.read_json(f"{uri}/{MANIFEST}")
        path = f"{uri}/data" if zone == "features" else f"{uri}/{m.get('data_file', 'data.parquet')}"
        df = pd.read_parquet(root._path(path)) if root.is_local else pd.read_parquet(path)
        df["_partition"] = p
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def split_partitions(partitions: tuple[str, ...], holdout_fraction: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The last partitions (by key, i.e. by date) are the holdout; the rest is for training."""
    parts = tuple(sorted(partitions))
    if len(parts) < 2:
        raise ValueError(f"training needs at least 2 partitions (got {len(parts)}): one for the holdout")
    k = max(1, round(len(parts) * holdout_fraction))
    return parts[:-k], parts[-k:]


def split_validation(feats, target: str, val_fraction: float, event_time: str | None = None):
    """Rows with a known target, in time order (the partition, then ``event_time`` within it when the
    model has one): the last ``val_fraction`` of them are the validation split.

    :returns: (train rows, validation rows)
    """
    order = [event_time, "_partition"] if event_time and event_time in feats.columns else ["_partition"]
    feats = feats[feats[target].notna()].sort_values(order, kind="stable").reset_index(drop=True)
    n_val = max(1, int(len(feats) * val_fraction))
    return feats.iloc[:-n_val], feats.iloc[-n_val:]


def metrics_for(task: str, y_true, y_pred) -> dict[str, float]:
    import numpy as np
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if task == "binary_classification":
        p = np.clip(y_pred, 1e-7, 1 - 1e-7)
        return {
            "roc_auc": float(skm.roc_auc_score(y_true, p)) if len(set(y_true)) > 1 else float("nan"),
            "pr_auc": float(skm.average_precision_score(y_true, p)) if len(set(y_true)) > 1 else float("nan"),
            "log_loss": float(skm.log_loss(y_true, p, labels=[0, 1])),
            "accuracy": float(((p >= 0.5) == (y_true >= 0.5)).mean()),
            "brier": float(np.mean((p - y_true) ** 2)),
            "positive_rate": float(y_true.mean()),
        }
    err = y_pred - y_true
    var = float(np.var(y_true))
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": 1.0 - float(np.mean(err**2)) / var if var > 0 else float("nan"),
    }


def _device(choice: str):
    import torch

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def fit_linear(linear, x, y, task: str, c: float) -> None:
    """Fit ``linear`` (a ``torch.nn.Linear`` to one output) to convergence, full batch with L-BFGS:
    minimise ``c * sum(loss) + ||w||^2 / 2`` (bias not penalised), the objective of scikit-learn's
    ``LogisticRegression(C=c)`` for a binary task and of ridge regression for a regression task.

    Solved in float64, then copied into ``linear``: in float32 the sum over all rows stops short of the
    minimum (two weeks of January with the piecewise columns: 5172.249 against 5172.221, above
    scikit-learn's own solution), which the flat minimum of correlated columns turns into prediction
    differences of several 1e-3."""
    import copy

    import torch

    loss_fn = (
        torch.nn.BCEWithLogitsLoss(reduction="sum")
        if task == "binary_classification"
        else torch.nn.MSELoss(reduction="sum")
    )
    lin64, x64, y64 = copy.deepcopy(linear).double(), x.double(), y.double()
    opt = torch.optim.LBFGS(
        lin64.parameters(),
        lr=1.0,
        max_iter=500,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = c * loss_fn(lin64(x64).squeeze(1), y64) + 0.5 * (lin64.weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        linear.weight.copy_(lin64.weight)
        linear.bias.copy_(lin64.bias)


def fit(req: TrainRequest, task: str, train_df, val_df, target: str, features: Any, on_epoch=None) -> dict[str, Any]:
    """Train with early stopping on the validation loss, then (``refit``) train again from the same seed
    on train + validation for the best number of epochs, so the most recent days are learnt too.

    With ``linear_start`` the model starts as the regularised linear model (wide part fitted to convergence,
    deep output zero) and that start is the first candidate: best epoch ``-1`` means no epoch of joint
    training improved the validation loss on it, and the refit is that linear model on train + validation.
    Without it, a split whose validation days differ from the training days could stop after one epoch
    with an underfit linear part (a seed-dependent, much weaker model).

    :param features: the model's ``FeaturesConfig`` (which columns are numeric, categorical, piecewise)
    :returns: the net, the preprocessor, the per-epoch history and throughput figures
    """
    import numpy as np
    import pandas as pd
    import torch

    from airloop.features import categorical_features, numeric_features
    from airloop.training.model import Preprocessor, build_mlp

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    device = _device(req.device)
    pin = device.type == "cuda"
    amp = device.type == "cuda"
    loss_fn = torch.nn.BCEWithLogitsLoss() if task == "binary_classification" else torch.nn.MSELoss()
    # a regression target is learnt standardised (a count in the hundreds would swamp the loss and the
    # linear start's penalty); the net turns its output back with ``to_target``
    scale = target_scale(train_df[target], task)

    def preprocessor(df):
        return Preprocessor(
            numeric_features(features),
            categorical_features(features),
            piecewise=list(features.piecewise),
            bins=features.piecewise_bins,
        ).fit(df)

    def tensors(pre, df):
        x = torch.from_numpy(pre.transform(df))
        y = torch.from_numpy(((df[target].to_numpy(dtype=np.float64) - scale[0]) / scale[1]).astype(np.float32))
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)

    def evaluate(net, xv, yv):
        net.eval()
        with torch.no_grad():
            vo = net(xv).squeeze(1).float()
            vp = torch.sigmoid(vo) if task == "binary_classification" else net.to_target(vo)
        return float(loss_fn(vo, yv)), metrics_for(
            task,
            net.to_target(yv).cpu().numpy() if task != "binary_classification" else yv.cpu().numpy(),
            vp.cpu().numpy(),
        )

    def run(pre, xt, yt, epochs: int, val=None, record=None):
        torch.manual_seed(req.seed)
        np.random.seed(req.seed)
        net = build_mlp(pre.width, req.hidden, req.dropout, scale).to(device)
        best = (math.inf, None, -1)
        if req.linear_start:
            t_lin = time.perf_counter()
            torch.nn.init.zeros_(net.deep[-1].weight)
            torch.nn.init.zeros_(net.deep[-1].bias)
            fit_linear(net.wide, xt, yt, task, req.linear_c)
            timings["linear_seconds"] += time.perf_counter() - t_lin
            if val is not None:
                start_loss, start_metrics = evaluate(net, *val)
                linear_val.update({"val_loss": start_loss, **{f"val_{k}": v for k, v in start_metrics.items()}})
                best = (start_loss, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, -1)
        opt = torch.optim.AdamW(net.parameters(), lr=req.learning_rate, weight_decay=req.weight_decay)
        gen = torch.Generator(device="cpu").manual_seed(req.seed)
        batch = batch_size(req.batch_size, len(xt))
        seen, t0 = 0, time.perf_counter()  # throughput counts the epochs, not the linear start
        for epoch in range(epochs):
            net.train()
            order = torch.randperm(len(xt), generator=gen).to(device)
            total = 0.0
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]  # batches are slices of the tensors
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                    out = net(xt[idx]).squeeze(1)
                loss = loss_fn(out.float(), yt[idx])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            if val is None:
                continue
            val_loss, val_metrics = evaluate(net, *val)
            row = {
                "epoch": epoch,
                "train_loss": total / len(xt),
                "val_loss": val_loss,
                **{f"val_{k}": v for k, v in val_metrics.items()},
            }
            record.append(row)
            if on_epoch:
                on_epoch(row)
            if val_loss < best[0] - 1e-6:
                best = (val_loss, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, epoch)
            elif epoch - best[2] >= req.patience:
                break
        return net, best, seen, time.perf_counter() - t0

    history: list[dict[str, Any]] = []
    linear_val: dict[str, float] = {}
    timings = {"linear_seconds": 0.0}
    pre = preprocessor(train_df)
    xt, yt = tensors(pre, train_df)
    net, best, seen, elapsed = run(pre, xt, yt, req.max_epochs, val=tensors(pre, val_df), record=history)
    best_epoch = best[2]
    if req.refit:
        full = pd.concat([train_df, val_df], ignore_index=True)
        pre = preprocessor(full)
        xf, yf = tensors(pre, full)
        net, _, seen2, elapsed2 = run(pre, xf, yf, best_epoch + 1)
        seen, elapsed = seen + seen2, elapsed + elapsed2
    else:
        net.load_state_dict(best[1])
    net.to("cpu").eval()
    return {
        "net": net,
        "pre": pre,
        "history": history,
        "best_epoch": best_epoch,
        "device": device.type,
        "linear_start_val": linear_val,
        "linear_seconds": timings["linear_seconds"],
        "samples_per_s": seen / elapsed if elapsed else float("nan"),
        "train_seconds": elapsed,
        "target_scale": scale,
    }


#: an epoch takes at least this many optimiser steps: a window of a few hundred rows in one batch of
#: 1,024 would give the deep part one step an epoch, and it would never leave its start
MIN_STEPS_PER_EPOCH = 10


def batch_size(configured: int, rows: int) -> int:
    """The configured batch size, smaller for small windows so an epoch has MIN_STEPS_PER_EPOCH steps."""
    return max(32, min(configured, rows // MIN_STEPS_PER_EPOCH))


def target_scale(y, task: str) -> tuple[float, float]:
    """(mean, std) a regression target is standardised by in training; (0, 1) for a classifier."""
    import numpy as np

    if task == "binary_classification":
        return 0.0, 1.0
    values = np.asarray(y, dtype=np.float64)
    values = values[~np.isnan(values)]
    std = float(values.std()) if len(values) > 1 else 1.0
    return (float(values.mean()) if len(values) else 0.0), (std if std > 1e-12 else 1.0)


def predict(net, pre, df, task: str):
    import torch

    with torch.no_grad():
        out = net(torch.from_numpy(pre.transform(df))).squeeze(1)
        return (torch.sigmoid(out) if task == "binary_classification" else net.to_target(out)).numpy()


def _ensure_experiment(client, name: str, artifact_root: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root)


def find_registered(client, model: str, run_key: str):
    """The model version already registered for this training run key, if any (retry safety)."""
    found = client.search_model_versions(f"name = '{model}' and tags.{RUN_KEY_TAG} = '{run_key}'")
    return sorted(found, key=lambda v: int(v.version))[0] if found else None


def train(req: TrainRequest) -> dict[str, Any]:
    """Train, log and register; return a small JSON-safe result (the task's XCom)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from airloop.config import get_pipeline
    from airloop.features import feature_columns, feature_version
    from airloop.storage import DataRoot
    from airloop.training.model import make_pyfunc_class

    cfg = get_pipeline(req.model)
    root = DataRoot(req.data_root)
    mlflow.set_tracking_uri(req.tracking_uri)
    client = MlflowClient(req.tracking_uri)
    task, target = cfg.task.type, cfg.task.target

    existing = find_registered(client, cfg.name, req.run_key) if _registered_model_exists(client, cfg.name) else None
    if existing is not None:
        log.info("run key %s already registered as %s v%s; not training again", req.run_key, cfg.name, existing.version)
        return json.loads(client.get_run(existing.run_id).data.tags.get("airloop_result", "{}")) or {
            "model": cfg.name,
            "version": existing.version,
            "run_id": existing.run_id,
        }

    train_parts, holdout_parts = split_partitions(req.partitions, req.holdout_fraction)
    feats = load_partitions(root, "features", cfg.name, train_parts)
    train_df, val_df = split_validation(feats, target, req.val_fraction, cfg.event_time)
    holdout_feats = load_partitions(root, "features", cfg.name, holdout_parts)
    holdout_feats = holdout_feats[holdout_feats[target].notna()]

    artifact_root = (
        None
        if req.tracking_uri.startswith(("http://", "https://", "databricks"))
        else f"{root.file_uri(root.uri + '/mlflow-artifacts')}/{cfg.name}"
    )
    exp_id = _ensure_experiment(client, f"airloop-{cfg.name}", artifact_root)
    version_of_features = feature_version(cfg.features, cfg.feature_search_dirs)
    tags = {
        **req.lineage,
        RUN_KEY_TAG: req.run_key,
        "airloop.model": cfg.name,
        "airloop.feature_version": version_of_features,
        "airloop.train_partitions": ",".join(train_parts),
        "airloop.holdout_partitions": ",".join(holdout_parts),
    }
    for p in req.partitions:
        m = root.read_json(f"{root.partition_uri('features', cfg.name, p)}/_manifest.json")
        tags[f"airloop.partition.{p}"] = str(m.get("source_content_hash"))
        result_uri = f"{root.partition_uri('reports', cfg.name, p)}/validation.json"
        if root.exists(result_uri):  # the gate's verdict on exactly this content
            v = root.read_json(result_uri)
            st = v.get("statistics", {})
            tags[f"airloop.validation.{p}"] = (
                f"{'passed' if v.get('success') else 'FAILED'} {st.get('successful_expectations')}/"
                f"{st.get('evaluated_expectations')} (suite {v.get('suite')}, content {v.get('content_hash')})"
            )
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{cfg.name}-{req.run_key}", tags=tags) as run:
        mlflow.log_params(
            {
                "task": task,
                "target": target,
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
                "train_rows": len(train_df),
                "val_rows": len(val_df),
                "holdout_rows": len(holdout_feats),
                "partitions": len(req.partitions),
            }
        )
        result = fit(
            req,
            task,
            train_df,
            val_df,
            target,
            cfg.features,
            on_epoch=lambda r: mlflow.log_metrics({k: v for k, v in r.items() if k != "epoch"}, step=r["epoch"]),
        )
        net, pre = result["net"], result["pre"]
        hold = metrics_for(task, holdout_feats[target], predict(net, pre, holdout_feats, task))
        mlflow.log_metrics({f"holdout_{k}": v for k, v in hold.items() if not math.isnan(v)})
        mlflow.log_metrics(
            {
                "samples_per_s": result["samples_per_s"],
                "best_epoch": result["best_epoch"],
                "linear_seconds": result["linear_seconds"],
                **{f"linear_start_{k}": v for k, v in result["linear_start_val"].items() if not math.isnan(v)},
            }
        )
        mlflow.set_tag("airloop.device", result["device"])

        raw = load_partitions(root, "raw", cfg.name, holdout_parts[:1])
        # the signature keeps the batch schema's types: ints where the pipeline declares int (never null
        # after the gate), doubles where it declares float (nullable)
        request_columns = cfg.request_columns
        example = raw[request_columns].dropna().head(5).reset_index(drop=True)
        if example.empty:
            example = raw[request_columns].head(5).reset_index(drop=True)
        ref = train_df.sample(n=min(REFERENCE_ROWS, len(train_df)), random_state=req.seed)[
            [*feature_columns(cfg.features), target]
        ]
        ref = ref.assign(prediction=predict(result["net"], result["pre"], ref, task))  # for prediction drift
        with tempfile.TemporaryDirectory() as tmp:
            import torch

            paths = model_artifacts(
                tmp,
                cfg,
                net,
                pre,
                req,
                task,
                version_of_features,
                prediction_edges(ref["prediction"]),
                result["target_scale"],
            )
            pyfunc = make_pyfunc_class()()
            pyfunc.load_context(type("Ctx", (), {"artifacts": paths})())
            signature = infer_signature(example, pyfunc.predict(None, example))
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=pyfunc,
                artifacts=paths,
                signature=signature,
                input_example=example,
                code_paths=model_code_paths(cfg),
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"mlflow=={mlflow.__version__}",
                    "pandas<3",
                ],
            )
            ref_path = f"{tmp}/reference_sample.parquet"
            ref.to_parquet(ref_path, index=False)
            mlflow.log_artifact(ref_path, artifact_path="reference")

        version = register_once(client, cfg.name, info.model_uri, run.info.run_id, req.run_key, model_id=info.model_id)
        out = {
            "model": cfg.name,
            "version": str(version.version),
            "run_id": run.info.run_id,
            "model_uri": f"models:/{cfg.name}/{version.version}",
            "metrics": {k: v for k, v in hold.items() if not math.isnan(v)},
            "holdout_partitions": list(holdout_parts),
            "train_partitions": list(train_parts),
            "device": result["device"],
            "samples_per_s": round(result["samples_per_s"], 1),
            "best_epoch": result["best_epoch"],
            "experiment_id": exp_id,
        }
        client.set_tag(run.info.run_id, "airloop_result", json.dumps(out))
    log.info("trained %s v%s on %s (holdout %s)", cfg.name, version.version, result["device"], hold)
    return out


#: the prediction histogram's interior bounds: the deciles of the model's own reference predictions
PREDICTION_QUANTILES = tuple(i / 10 for i in range(1, 10))


def prediction_edges(predictions) -> list[float]:
    """Sorted, distinct interior bucket bounds of a model's prediction histogram (the canary's PSI), taken
    from its reference predictions, so the histogram fits the model's output scale."""
    import numpy as np

    values = np.asarray(predictions, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return []
    return sorted({float(q) for q in np.quantile(values, PREDICTION_QUANTILES)})


def model_artifacts(
    folder: str,
    cfg,
    net,
    pre,
    req: TrainRequest,
    task: str,
    version_of_features: str,
    edges: list[float],
    scale: tuple[float, float] = (0.0, 1.0),
) -> dict[str, str]:
    """Write the files the pyfunc loads: weights, preprocessor, feature definition and metadata."""
    import torch

    paths = {
        "weights": f"{folder}/weights.pt",
        "preprocessor": f"{folder}/preprocessor.json",
        "features": f"{folder}/features.json",
        "meta": f"{folder}/meta.json",
    }
    torch.save(net.state_dict(), paths["weights"])
    Path(paths["preprocessor"]).write_text(pre.to_json())
    Path(paths["features"]).write_text(cfg.features.model_dump_json())
    Path(paths["meta"]).write_text(
        json.dumps(
            {
                "task": task,
                "hidden": list(req.hidden),
                "dropout": req.dropout,
                "feature_version": version_of_features,
                "request_columns": cfg.request_columns,
                "event_time": cfg.event_time,
                "prediction_edges": edges,
                "target_scale": list(scale),
            }
        )
    )
    return paths


def model_code_paths(cfg) -> list[str]:
    """The code the logged model imports: the ``airloop`` package, and a ``features.module`` file that
    lives in the pipelines folder rather than in an installed package."""
    from airloop.features import module_file

    paths = [str(Path(__file__).resolve().parents[1])]
    if cfg.features.module:
        f = module_file(cfg.features.module, cfg.feature_search_dirs)
        if f is not None and any(f.resolve().is_relative_to(Path(d).resolve()) for d in cfg.feature_search_dirs):
            paths.append(str(f))
    return paths


def _registered_model_exists(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


def register_once(client, name: str, source: str, run_id: str, run_key: str, model_id: str | None = None):
    """Create the model version for this run key, or return the one a previous try created."""
    from mlflow.exceptions import MlflowException

    if not _registered_model_exists(client, name):
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train, log to MLflow and register one model version")
    ap.add_argument("--model", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--partitions", required=True, help="comma-separated feature partitions, e.g. ds=2013-01-01,...")
    ap.add_argument("--run-key", required=True, help="one model version per key (use <dag_id>/<run_id>)")
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", ""))
    ap.add_argument("--lineage", default="{}", help="JSON object of lineage tags")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--result-file", default="", help="write the result JSON here (/airflow/xcom/return.json in a pod)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
    out = train(req)
    if args.result_file:
        Path(args.result_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.result_file).write_text(json.dumps(out))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
