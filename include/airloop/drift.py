"""Drift checks: the champion's training reference against the live traffic of one data interval.

Reference: the reference sample the champion's training run logged to MLflow
(``reference/reference_sample.parquet``: the model's features, the label and the model's own
predictions). Current: the prediction log of the interval (partitioned by event day), turned into the
same features with the shared transform, plus the served predictions, plus realized outcomes where their
day has been ingested.

Evidently 0.7 computes one drift score per column (``DataDriftPreset`` with the config's methods and
threshold); a column drifts when its score reaches ``column_threshold``; the dataset drifts when the
share of drifting feature columns reaches ``drift_share``. The prediction column is judged the same way
but reported apart. Large windows are sampled reproducibly (``sample_rows`` rows, seeded), which keeps
the check's time and memory flat.

:func:`check_interval` runs one check end to end: the reads, the comparison, the report, the history.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from airloop.config import DriftConfig, PipelineConfig
from airloop.errors import AirloopError
from airloop.storage import DataRoot

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

REFERENCE_ARTIFACT = "reference/reference_sample.parquet"
PREDICTION = "prediction"
CHAMPION = "champion"
REPORT_FILE = "drift_report.html"


class NoVerdict(AirloopError):
    """Nothing to judge in the interval (no champion, or too few predictions): not a failure, a skip."""


@dataclass
class DriftResult:
    """One drift check: what was compared, the per-column scores and the verdicts (JSON-serialisable)."""

    model: str
    champion_version: str | None
    interval_start: str
    interval_end: str
    reference_uri: str
    reference_rows: int
    current_rows: int
    compared_rows: int
    seed: int
    method: dict[str, Any]
    column_scores: dict[str, float]
    drifted_columns: list[str]
    drift_share: float
    dataset_drift: bool
    prediction_score: float | None
    prediction_drifted: bool
    performance: dict[str, Any] | None = None
    report_uri: str | None = None
    computed_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    @property
    def drifting(self) -> bool:
        """What the drift sensor acts on: the dataset drifted, or the model's predictions did."""
        return self.dataset_drift or self.prediction_drifted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for a task log: what was compared, the verdicts and where the report is."""
        drifted = {c: self.column_scores[c] for c in self.drifted_columns}
        return (
            f"{self.model} v{self.champion_version} on {self.interval_start[:10]} .. {self.interval_end[:10]} "
            f"({self.current_rows} predictions, {self.compared_rows} compared): share {self.drift_share:.2f} "
            f"(dataset drift at {self.method.get('drift_share')}) -> {'DRIFT' if self.drifting else 'no drift'}; "
            f"drifted {drifted}; prediction score {self.prediction_score}; performance {self.performance}; "
            f"report {self.report_uri}"
        )


def sample(df: pd.DataFrame, rows: int | None, seed: int) -> pd.DataFrame:
    """At most ``rows`` rows, drawn reproducibly (the same seed and input give the same rows)."""
    if rows is None or len(df) <= rows:
        return df
    return df.sample(n=rows, random_state=seed).sort_index()


def column_scores(
    reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], categorical: list[str], cfg: DriftConfig
) -> tuple[dict[str, float], Any]:
    """Evidently's per-column drift scores, and the evaluated report (for its HTML)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numeric = [c for c in numeric if c in reference.columns and c in current.columns]
    categorical = [c for c in categorical if c in reference.columns and c in current.columns]
    cols = numeric + categorical
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    ref = reference[cols].copy()
    cur = current[cols].copy()
    for c in categorical:  # Evidently wants one type per categorical column; missing stays missing
        ref[c] = ref[c].astype("string")
        cur[c] = cur[c].astype("string")
    preset = DataDriftPreset(
        columns=cols,
        num_method=cfg.num_method,
        cat_method=cfg.cat_method,
        threshold=cfg.column_threshold,
        drift_share=cfg.drift_share,
        per_column_threshold={c: t for c, t in cfg.column_thresholds.items() if c in cols} or None,
    )
    report = Report([preset]).run(
        current_data=Dataset.from_pandas(cur, data_definition=definition),
        reference_data=Dataset.from_pandas(ref, data_definition=definition),
    )
    scores = {}
    for m in report.dict()["metrics"]:
        conf = m.get("config", {})
        if conf.get("type", "").endswith("ValueDrift"):
            scores[conf["column"]] = float(m["value"])
    return scores, report


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: list[str],
    categorical: list[str],
    cfg: DriftConfig,
    seed: int,
    sample_rows: int | None,
) -> tuple[dict[str, Any], Any]:
    """Scores and verdicts of ``current`` against ``reference`` (both sampled to ``sample_rows``).

    :param features: every feature column compared; ``categorical`` says which of them are categorical. The
        prediction column is compared as a numeric column whatever the task (a probability or a quantity).
    """
    ref, cur = sample(reference, sample_rows, seed), sample(current, sample_rows, seed + 1)
    numeric = [c for c in features if c not in categorical]
    if PREDICTION in ref.columns and PREDICTION in cur.columns:
        numeric.append(PREDICTION)
    scores, report = column_scores(ref, cur, numeric, [c for c in categorical if c in features], cfg)
    feature_scores = {c: s for c, s in scores.items() if c != PREDICTION}
    drifted = sorted(c for c, s in feature_scores.items() if s >= cfg.threshold(c))
    share = len(drifted) / len(feature_scores) if feature_scores else 0.0
    pred = scores.get(PREDICTION)
    return {
        "column_scores": {c: round(s, 6) for c, s in sorted(scores.items())},
        "drifted_columns": drifted,
        "drift_share": round(share, 4),
        "dataset_drift": share >= cfg.drift_share,
        "prediction_score": None if pred is None else round(pred, 6),
        "prediction_drifted": pred is not None and pred >= cfg.threshold(PREDICTION),
        "compared_rows": len(cur),
    }, report


def current_frame(entries: list[dict[str, Any]], cfg: PipelineConfig) -> pd.DataFrame:
    """Logged predictions -> the model's features of their inputs, the served prediction, the outcome key."""
    import pandas as pd

    from airloop.features import compute_features

    inputs = pd.DataFrame([e["inputs"] for e in entries])
    out = compute_features(inputs, cfg.features, search_dirs=cfg.feature_search_dirs)
    out[PREDICTION] = [float(e["output"]) for e in entries]
    for c in inputs.columns:  # identifiers and date parts, for joining outcomes
        if c not in out.columns:
            out[c] = inputs[c].to_numpy()
    return out.reset_index(drop=True)


def read_interval(root: DataRoot, model: str, start: dt.datetime, end: dt.datetime) -> list[dict[str, Any]]:
    """Logged predictions whose event time falls in [start, end)."""
    from airloop.serving.prediction_log import read_log

    local = root.uri.removeprefix("file://")
    out: list[dict[str, Any]] = []
    day = start.date()
    while dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) < end:
        for rec in read_log(local, model, day.isoformat())[0]:
            t = dt.datetime.fromisoformat(rec.get("event_time", rec["timestamp"]))
            if start <= t < end:
                out.append(rec)
        day += dt.timedelta(days=1)
    return out


def performance(
    cfg: PipelineConfig, root: DataRoot, current: pd.DataFrame, reference: pd.DataFrame
) -> dict[str, Any] | None:
    """The gate metric on the interval's predictions whose outcome is known, next to the reference's."""
    from airloop.canary import join_outcomes, known_outcomes, outcome_metric

    key = list(cfg.deployment.outcome_key)
    if not key or not all(k in current.columns for k in key) or "y" not in reference.columns:
        return None
    outcomes = known_outcomes(cfg, root, current[key].drop_duplicates().to_dict(orient="records"))
    if outcomes is None:
        return {"metric": cfg.gate.metric, "labeled": 0, "current": None, "reference": None}
    joined = join_outcomes(current.rename(columns={PREDICTION: "p"}), outcomes, key)
    metric = outcome_metric(cfg)

    def rounded(y: Any, p: Any) -> float | None:
        value = metric(y, p)
        return None if value is None else round(value, 6)

    ref = reference.dropna(subset=["y", PREDICTION]) if PREDICTION in reference.columns else reference.iloc[0:0]
    return {
        "metric": cfg.gate.metric,
        "labeled": int(len(joined)),
        "current": rounded(joined["y"].to_numpy(), joined["p"].to_numpy()),
        "reference": rounded(ref["y"].to_numpy(), ref[PREDICTION].to_numpy()),
    }


# --- the time series of results ---------------------------------------------------------------------


def read_history(root: DataRoot, model: str) -> list[dict[str, Any]]:
    return root.read_jsonl(root.drift_history(model))


def record(root: DataRoot, result: DriftResult) -> None:
    """Add a result to the model's drift history; a re-run of the same interval replaces its entry."""
    rows = [
        r
        for r in read_history(root, result.model)
        if (r["interval_start"], r["interval_end"]) != (result.interval_start, result.interval_end)
    ]
    rows.append(result.to_dict())
    rows.sort(key=lambda r: (r["interval_start"], r["computed_at"]))
    root.write_jsonl_atomic(root.drift_history(result.model), rows)


def trend_html(history: list[dict[str, Any]], model: str) -> str:
    """A self-contained HTML plot (Plotly) of the drift share and per-column scores over time."""
    import plotly.graph_objects as go

    x = [r["interval_start"][:10] for r in history]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=x, y=[r["drift_share"] for r in history], name="drift share", mode="lines+markers", line={"width": 4}
        )
    )
    columns = sorted({c for r in history for c in r["column_scores"]})
    for c in columns:
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[r["column_scores"].get(c) for r in history],
                name=c,
                mode="lines+markers",
                visible="legendonly" if c not in (history[-1]["drifted_columns"] if history else []) else True,
            )
        )
    if history:
        fig.add_hline(y=history[-1]["method"]["drift_share"], line_dash="dash", annotation_text="dataset drift at")
        fig.add_hline(y=history[-1]["method"]["column_threshold"], line_dash="dot", annotation_text="column drifts at")
    fig.update_layout(
        title=f"{model}: drift over time (share of drifting features; per-column scores)",
        xaxis_title="data interval",
        yaxis_title="score",
    )
    html: str = fig.to_html(include_plotlyjs=True, full_html=True)
    return html


# --- one check, end to end -------------------------------------------------------------------------


def check_interval(
    cfg: PipelineConfig, root: DataRoot, start: dt.datetime, end: dt.datetime, client: MlflowClient | None = None
) -> DriftResult:
    """Compare the champion's reference with the predictions of [start, end), store the HTML report (data
    root and the champion's MLflow run), add the result to the history and redraw the trend plot.

    :raises NoVerdict: no champion, or fewer than ``drift.min_rows`` predictions in the interval
    """
    import tempfile

    from mlflow import MlflowClient

    from airloop.features import categorical_features, feature_columns

    client = client or MlflowClient()
    version, run_id = find_champion(client, cfg.name)
    entries = read_interval(root, cfg.name, start, end)
    if len(entries) < cfg.drift.min_rows:
        raise NoVerdict(
            f"{len(entries)} predictions with event time in [{start}, {end}); a verdict "
            f"needs {cfg.drift.min_rows} (drift.min_rows)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        reference = load_reference(client, run_id, cfg.task.target, tmp)
        current = current_frame(entries, cfg)
        features, categorical = feature_columns(cfg.features), categorical_features(cfg.features)
        verdict, report = compare(
            reference, current, features, categorical, cfg.drift, cfg.drift.seed, cfg.drift.sample_rows
        )
        report_uri = save_report(root, client, cfg.name, run_id, f"{start:%Y-%m-%d}", report, tmp)
    result = DriftResult(
        model=cfg.name,
        champion_version=version,
        interval_start=start.isoformat(),
        interval_end=end.isoformat(),
        reference_uri=f"runs:/{run_id}/{REFERENCE_ARTIFACT}",
        reference_rows=len(reference),
        current_rows=len(current),
        seed=cfg.drift.seed,
        method=method(cfg.drift),
        performance=performance(cfg, root, current, reference),
        report_uri=report_uri,
        **verdict,
    )
    record(root, result)
    root.write_bytes_atomic(root.drift_trend(cfg.name), trend_html(read_history(root, cfg.name), cfg.name).encode())
    return result


def find_champion(client: MlflowClient, model: str) -> tuple[str, str]:
    """The ``@champion``'s version and training run (which logged the reference); :class:`NoVerdict` when
    there is none."""
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(model, CHAMPION)
    except MlflowException:
        raise NoVerdict(f"{model} has no @{CHAMPION}: nothing is served, nothing can drift") from None
    if not champion.run_id:
        raise NoVerdict(f"{model} v{champion.version} (@{CHAMPION}) has no training run, so no reference to compare")
    return str(champion.version), champion.run_id


def load_reference(client: MlflowClient, run_id: str, target: str, folder: str) -> pd.DataFrame:
    """The reference sample a training run logged, its target renamed ``y``."""
    import pandas as pd

    path = client.download_artifacts(run_id, REFERENCE_ARTIFACT, dst_path=folder)
    return pd.read_parquet(path).rename(columns={target: "y"})


def save_report(
    root: DataRoot, client: MlflowClient, model: str, run_id: str, day: str, report: Any, folder: str
) -> str:
    """Write the Evidently report to ``drift_folder(model, day)`` and to the champion's run; return its URI."""
    from pathlib import Path

    html = Path(folder) / REPORT_FILE
    report.save_html(str(html))
    report_uri = f"{root.drift_folder(model, day)}/report.html"
    root.write_bytes_atomic(report_uri, html.read_bytes())
    client.log_artifact(run_id, str(html), artifact_path=f"drift/{day}")
    return report_uri


def method(cfg: DriftConfig) -> dict[str, Any]:
    """How a check judged drift (recorded with each result, so the history says what each verdict meant)."""
    return {
        "num": cfg.num_method,
        "cat": cfg.cat_method,
        "column_threshold": cfg.column_threshold,
        "column_thresholds": dict(cfg.column_thresholds),
        "drift_share": cfg.drift_share,
        "sample_rows": cfg.sample_rows,
    }


# --- drift-triggered retraining ------------------------------------------------------------------------


def retrain_cooldown(root: DataRoot, model: str, now: dt.datetime, cooldown_hours: int) -> str | None:
    """Why drift may not start another retraining yet (the last one is within the cooldown), or None."""
    log = root.read_jsonl(root.retrain_log(model))
    if not log:
        return None
    last = log[-1]
    allowed = dt.datetime.fromisoformat(last["at"]) + dt.timedelta(hours=cooldown_hours)
    if now >= allowed:
        return None
    return (
        f"cooldown: drift already started retraining run {last['run_id']} at "
        f"{last['at']}; the next one is allowed after {allowed.isoformat()} "
        f"(drift.cooldown_hours={cooldown_hours})"
    )


def record_retrain(root: DataRoot, model: str, at: dt.datetime, run_id: str, context: dict[str, Any]) -> None:
    """Append a drift-triggered retraining to the model's retrain log (what the cooldown looks at)."""
    entry = {"at": at.isoformat(), "run_id": run_id, "drift": context}
    root.write_jsonl_atomic(root.retrain_log(model), [*root.read_jsonl(root.retrain_log(model)), entry])


def drift_context(result: dict[str, Any]) -> dict[str, Any]:
    """What the retraining run is told about the drift that caused it (small, JSON)."""
    drifted = {c: result["column_scores"][c] for c in result["drifted_columns"]}
    return {
        "model": result["model"],
        "champion_version": result["champion_version"],
        "drift_share": result["drift_share"],
        "dataset_drift": result["dataset_drift"],
        "drifted_columns": drifted,
        "prediction_score": result["prediction_score"],
        "prediction_drifted": result["prediction_drifted"],
        "report_uri": result["report_uri"],
        "reference": {"uri": result["reference_uri"], "rows": result["reference_rows"]},
        "current": {"start": result["interval_start"], "end": result["interval_end"], "rows": result["current_rows"]},
        "performance": result.get("performance"),
    }


def drift_verdict(history: list[dict[str, Any]], interval_start: str) -> tuple[str, dict[str, Any] | None]:
    """What the drift history says to a run whose interval starts at ``interval_start`` (UTC ISO text).

    ``("drift", latest)`` when the latest result drifts; ``("no_drift", latest)`` when the latest result is
    this interval's (or a later one's) and does not; ``("waiting", None)`` until one of these holds.
    """
    if not history:
        return "waiting", None
    latest = max(history, key=lambda r: (r["interval_start"], r["computed_at"]))
    if latest["dataset_drift"] or latest["prediction_drifted"]:
        return "drift", latest
    if latest["interval_start"] >= interval_start:
        return "no_drift", latest
    return "waiting", None
