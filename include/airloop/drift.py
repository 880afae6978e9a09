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
the check's time and memory flat; the benchmark and a test show the sampled verdicts agree with the full
computation.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from airloop.config import DriftConfig, PipelineConfig
from airloop.storage import DataRoot

if TYPE_CHECKING:
    import pandas as pd

REFERENCE_ARTIFACT = "reference/reference_sample.parquet"
PREDICTION = "prediction"


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


def history_uri(root: DataRoot, model: str) -> str:
    return f"{root.uri}/reports/{model}/drift/history.jsonl"


def read_history(root: DataRoot, model: str) -> list[dict[str, Any]]:
    return root.read_jsonl(history_uri(root, model))


def record(root: DataRoot, result: DriftResult) -> None:
    """Add a result to the model's drift history; a re-run of the same interval replaces its entry."""
    rows = [
        r
        for r in read_history(root, result.model)
        if (r["interval_start"], r["interval_end"]) != (result.interval_start, result.interval_end)
    ]
    rows.append(result.to_dict())
    rows.sort(key=lambda r: (r["interval_start"], r["computed_at"]))
    root.write_jsonl_atomic(history_uri(root, result.model), rows)


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
    return fig.to_html(include_plotlyjs=True, full_html=True)
