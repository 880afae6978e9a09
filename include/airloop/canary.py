"""Canary analysis: from measured per-variant figures to continue, promote, rollback or hold.

Pure functions over the model server's Prometheus metrics (or KServe's, in production), so every rule is
tested without a server. A step is judged only after ``interval_seconds`` and ``min_requests``
challenger requests; no traffic means hold, never promote; a rollout still holding at its deadline is
rolled back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airloop.config import CanaryConfig

if TYPE_CHECKING:
    from airloop.config import PipelineConfig
    from airloop.storage import DataRoot

_LINE = re.compile(r"^(?P<name>airloop_[a-z_]+)\{(?P<labels>[^}]*)\}\s+(?P<value>[-+0-9.eE]+|\+Inf|NaN)$")


@dataclass
class VariantStats:
    requests: float = 0.0
    server_errors: float = 0.0
    latency_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    prediction_buckets: dict[float, float] = field(default_factory=dict)
    online_metric: float | None = None  # e.g. ROC AUC where labels have arrived

    @property
    def error_rate(self) -> float:
        total = self.requests + self.server_errors
        return self.server_errors / total if total else 0.0

    def quantile(self, q: float) -> float | None:
        """A latency quantile from the cumulative histogram, interpolated linearly inside its bucket as
        Prometheus' ``histogram_quantile`` does (a rank in the +Inf bucket gives the largest finite bound)."""
        if not self.latency_buckets:
            return None
        bounds = sorted(self.latency_buckets)
        total = self.latency_buckets[bounds[-1]]
        if total <= 0:
            return None
        rank = q * total
        prev_bound, prev_count = 0.0, 0.0
        for le in bounds:
            count = self.latency_buckets[le]
            if count >= rank:
                if math.isinf(le):
                    return prev_bound
                in_bucket = count - prev_count
                return prev_bound + (le - prev_bound) * ((rank - prev_count) / in_bucket if in_bucket else 1.0)
            prev_bound, prev_count = le, count
        return prev_bound

    @property
    def latency_count(self) -> float:
        return max(self.latency_buckets.values()) if self.latency_buckets else 0.0


def tail_quantile(q: float, samples: float, min_above: int) -> float:
    """The highest quantile up to ``q`` that leaves at least ``min_above`` of ``samples`` above it (never
    below the median): a tail quantile of few requests is decided by a handful of them, so a small step is
    judged at a lower one (why: the README's design notes, "Latency of a small canary step")."""
    if samples <= 0 or min_above <= 0:
        return q
    return max(0.5, min(q, 1.0 - min_above / samples))


def parse_metrics(text: str) -> dict[str, VariantStats]:
    """Per-variant figures from the server's ``/metrics`` text."""
    out: dict[str, VariantStats] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        labels = dict(kv.split("=", 1) for kv in m["labels"].split(",") if "=" in kv)
        labels = {k: v.strip('"') for k, v in labels.items()}
        variant = labels.get("variant", "")
        if variant not in ("champion", "challenger"):
            continue
        st = out.setdefault(variant, VariantStats())
        value = float(m["value"])
        name = m["name"]
        if name == "airloop_requests_total":
            st.requests = value
        elif name == "airloop_server_errors_total":
            st.server_errors = value
        elif name == "airloop_request_latency_seconds_bucket":
            st.latency_buckets[math.inf if labels["le"] == "+Inf" else float(labels["le"])] = value
        elif name == "airloop_prediction_bucket":
            st.prediction_buckets[math.inf if labels["le"] == "+Inf" else float(labels["le"])] = value
    return out


def psi(expected: dict[float, float], actual: dict[float, float], eps: float = 1e-4) -> float:
    """Population stability index between two cumulative histograms (``le`` bound -> count).

    Any bounds work (the server's are the champion's reference quantiles); both sides should have the
    same. Where they differ, only the bounds both have are used: a cumulative count at a shared bound
    is exact on both sides, so the comparison is coarser but still like with like.
    """
    bounds = sorted(set(expected) & set(actual))

    def shares(cum: dict[float, float]) -> list[float]:
        counts = [cum[b] - (cum[bounds[i - 1]] if i else 0.0) for i, b in enumerate(bounds)]
        total = sum(counts) or 1.0
        return [max(c / total, eps) for c in counts]

    if not bounds:
        return 0.0
    e, a = shares(expected), shares(actual)
    return float(sum((ai - ei) * math.log(ai / ei) for ai, ei in zip(a, e, strict=True)))


@dataclass(frozen=True)
class StepDecision:
    action: str  # continue | promote | rollback | hold
    reason: str
    figures: dict[str, Any]


def _tail_latencies(
    cfg: CanaryConfig, champion: VariantStats, challenger: VariantStats
) -> tuple[float, float, float | None, float | None]:
    """(requests both variants have, the tail quantile judged at, champion's and challenger's latency there)."""
    n_lat = min(champion.latency_count, challenger.latency_count)
    q = tail_quantile(0.99, n_lat, cfg.latency_min_tail_requests)
    return n_lat, q, champion.quantile(q), challenger.quantile(q)


def _step_figures(
    cfg: CanaryConfig,
    step: int,
    champion: VariantStats,
    challenger: VariantStats,
    q: float,
    lat_c: float | None,
    lat_n: float | None,
    shift: float | None,
    concurrent: bool,
) -> dict[str, Any]:
    """The figures measured in a step, carried by its decision (into the rollout history and logs)."""
    return {
        "step_percent": cfg.steps[step],
        "challenger_requests": challenger.requests,
        "champion_requests": champion.requests,
        "challenger_5xx_rate": round(challenger.error_rate, 4),
        "champion_5xx_rate": round(champion.error_rate, 4),
        "p99_latency_s": {"champion": lat_c, "challenger": lat_n},
        "latency_quantile": round(q, 4),
        "prediction_psi": shift,
        "online_metric": {"champion": champion.online_metric, "challenger": challenger.online_metric}
        if concurrent
        else None,
    }


def _traffic_verdict(
    cfg: CanaryConfig,
    challenger: VariantStats,
    elapsed_s: float,
    rollout_elapsed_s: float,
    figures: dict[str, Any],
) -> StepDecision | None:
    """Rollback on too many challenger 5xx; hold (rollback at the deadline) until the step has traffic and time."""
    seen = challenger.requests + challenger.server_errors
    if challenger.error_rate > cfg.max_5xx_rate and seen >= min(cfg.min_requests, 20):
        return StepDecision(
            "rollback", f"challenger 5xx rate {challenger.error_rate:.2%} > {cfg.max_5xx_rate:.2%}", figures
        )
    if seen < cfg.min_requests or elapsed_s < cfg.interval_seconds:
        if rollout_elapsed_s >= cfg.deadline_minutes * 60:
            return StepDecision(
                "rollback",
                f"deadline of {cfg.deadline_minutes} min reached while holding "
                f"({seen:.0f} of {cfg.min_requests} challenger requests)",
                figures,
            )
        return StepDecision(
            "hold",
            f"waiting: {seen:.0f}/{cfg.min_requests} challenger requests, {elapsed_s:.0f}/{cfg.interval_seconds} s",
            figures,
        )
    return None


def _latency_verdict(
    cfg: CanaryConfig,
    n_lat: float,
    q: float,
    lat_c: float | None,
    lat_n: float | None,
    figures: dict[str, Any],
) -> StepDecision | None:
    """Rollback when the challenger's tail latency is too many times the champion's."""
    if lat_c and lat_n and lat_c not in (0, math.inf) and lat_n / lat_c > cfg.max_p99_latency_ratio:
        judged = "" if q >= 0.99 else f", judged at p{q * 100:.1f} of {n_lat:.0f} requests"
        return StepDecision(
            "rollback",
            f"challenger p99 latency {lat_n:.3f}s is {lat_n / lat_c:.1f}x the champion's "
            f"{lat_c:.3f}s (at most {cfg.max_p99_latency_ratio}x{judged})",
            figures,
        )
    return None


def _quality_verdict(
    cfg: CanaryConfig,
    champion: VariantStats,
    challenger: VariantStats,
    shift: float | None,
    concurrent: bool,
    lower_is_better: bool,
    figures: dict[str, Any],
) -> StepDecision | None:
    """Rollback on shifted predictions (unless the online metric is no worse) or a drop of the online metric."""
    sign = -1.0 if lower_is_better else 1.0
    better_online = (
        concurrent
        and champion.online_metric is not None
        and challenger.online_metric is not None
        and sign * (challenger.online_metric - champion.online_metric) >= 0
    )
    # A shift of the predictions is a proxy for "something is wrong" while outcomes are unknown; where they
    # are known and the challenger scores at least as well, the shift is the improvement, not a fault.
    if shift is not None and shift > cfg.max_prediction_psi and not better_online:
        return StepDecision(
            "rollback",
            f"challenger predictions shifted: PSI {shift} > {cfg.max_prediction_psi}",
            figures,
        )
    if concurrent and champion.online_metric is not None and challenger.online_metric is not None:
        allowed = (
            cfg.max_online_metric_drop
            if cfg.max_online_metric_drop_ratio is None
            else cfg.max_online_metric_drop_ratio * abs(champion.online_metric)
        )
        if sign * (champion.online_metric - challenger.online_metric) > allowed:
            return StepDecision(
                "rollback",
                f"online metric {challenger.online_metric:.4f} vs champion "
                f"{champion.online_metric:.4f} (at most {allowed:.4g} "
                f"{'higher' if lower_is_better else 'lower'})",
                figures,
            )
    return None


def judge_step(
    cfg: CanaryConfig,
    step: int,
    champion: VariantStats,
    challenger: VariantStats,
    elapsed_s: float,
    rollout_elapsed_s: float,
    concurrent: bool = True,
    lower_is_better: bool = False,
) -> StepDecision:
    """Judge one canary step (``step`` indexes ``cfg.steps``) from the figures measured during it.

    Checks in order: errors and traffic (:func:`_traffic_verdict`), latency, then prediction shift and
    online metric; a step that passes them all continues, or promotes at the last step.

    :param lower_is_better: the online metric's direction (RMSE, MAE, log loss:
        ``not airloop.config.higher_is_better(metric)``)
    :param concurrent: whether ``champion`` was measured on the same traffic in the same window. When not
        (the 100 % step, where the champion has no traffic and its figures come from an earlier step),
        only errors and latency are compared: prediction distributions and online metrics of different
        traffic windows (another time of day) are not comparable.
    """
    n_lat, q, lat_c, lat_n = _tail_latencies(cfg, champion, challenger)
    shift = round(psi(champion.prediction_buckets, challenger.prediction_buckets), 4) if concurrent else None
    figures = _step_figures(cfg, step, champion, challenger, q, lat_c, lat_n, shift, concurrent)
    verdict = (
        _traffic_verdict(cfg, challenger, elapsed_s, rollout_elapsed_s, figures)
        or _latency_verdict(cfg, n_lat, q, lat_c, lat_n, figures)
        or _quality_verdict(cfg, champion, challenger, shift, concurrent, lower_is_better, figures)
    )
    if verdict is not None:
        return verdict
    if step == len(cfg.steps) - 1:
        return StepDecision("promote", f"healthy at {cfg.steps[step]}% of traffic", figures)
    return StepDecision("continue", f"healthy at {cfg.steps[step]}%; next {cfg.steps[step + 1]}%", figures)


# --- the rollout: one state per challenger version, advanced by each look of the deploy DAG's sensor ----


def _stats_to_dict(st: VariantStats) -> dict[str, Any]:
    return {
        "requests": st.requests,
        "server_errors": st.server_errors,
        "latency_buckets": {str(k): v for k, v in st.latency_buckets.items()},
        "prediction_buckets": {str(k): v for k, v in st.prediction_buckets.items()},
        "online_metric": st.online_metric,
    }


def _stats_from_dict(d: dict[str, Any]) -> VariantStats:
    return VariantStats(
        d["requests"],
        d["server_errors"],
        {float(k): v for k, v in d["latency_buckets"].items()},
        {float(k): v for k, v in d["prediction_buckets"].items()},
        d.get("online_metric"),
    )


def _hist_reset(now: dict[float, float], base: dict[float, float]) -> bool:
    """Whether a cumulative histogram was reset between two readings: a count went down, or its bucket
    bounds changed (the server's prediction bounds follow the champion, and a new champion resets them)."""
    return bool(base) and bool(now) and (set(now) != set(base) or any(now[k] < v for k, v in base.items()))


def since(now: VariantStats, base: VariantStats) -> VariantStats:
    """What happened between two readings of cumulative counters. A counter that went down means the
    server restarted (counters reset), as Prometheus' ``increase()`` assumes: then ``now`` is the delta.
    The prediction histogram alone is also reset when the server loads a champion with other bucket
    bounds (the request counters go on): then its ``now`` is its delta."""
    reset = (
        now.requests < base.requests
        or now.server_errors < base.server_errors
        or any(now.latency_buckets.get(k, 0.0) < v for k, v in base.latency_buckets.items())
    )
    if reset:
        return VariantStats(
            now.requests, now.server_errors, dict(now.latency_buckets), dict(now.prediction_buckets), now.online_metric
        )

    def sub(a: dict[float, float], b: dict[float, float]) -> dict[float, float]:
        return dict(a) if _hist_reset(a, b) else {k: v - b.get(k, 0.0) for k, v in a.items()}

    return VariantStats(
        now.requests - base.requests,
        now.server_errors - base.server_errors,
        sub(now.latency_buckets, base.latency_buckets),
        sub(now.prediction_buckets, base.prediction_buckets),
        now.online_metric,
    )


@dataclass
class Rollout:
    """The state of one challenger's canary, kept in ``reports/<model>/canary/v<version>.json``."""

    model: str
    version: str
    champion_version: str | None
    started_at: float
    step: int = 0
    step_started_at: float = 0.0
    base: dict[str, dict[str, Any]] = field(default_factory=dict)  # cumulative readings at the step's start
    champion_ref: dict[str, Any] | None = None  # the champion's figures of the last step it had traffic
    status: str = "running"  # running | promoted | rolled_back
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rollout:
        return cls(**d)


def load_rollout(root: DataRoot, model: str, version: str) -> Rollout | None:
    """The saved state of ``version``'s canary, or None when it never started."""
    uri = root.canary_state(model, version)
    return Rollout.from_dict(root.read_json(uri)) if root.exists(uri) else None


def save_rollout(root: DataRoot, state: Rollout) -> None:
    root.write_json_atomic(root.canary_state(state.model, state.version), state.to_dict())


def start_rollout(
    model: str, version: str, champion_version: str | None, readings: dict[str, VariantStats], now: float
) -> Rollout:
    return Rollout(
        model,
        str(version),
        champion_version,
        started_at=now,
        step_started_at=now,
        base={k: _stats_to_dict(v) for k, v in readings.items()},
    )


def advance(
    state: Rollout, cfg: CanaryConfig, readings: dict[str, VariantStats], now: float, lower_is_better: bool = False
) -> StepDecision:
    """Judge the current step from cumulative ``readings`` and move ``state`` on (in place).

    continue: the next step starts now (new base readings); promote / rollback: the rollout ends; hold:
    nothing changes. At 100 % the champion gets no traffic, so the challenger's errors and latency are
    compared with the champion's figures from the last step where it had some (see :func:`judge_step`).
    """
    if state.status != "running":
        raise ValueError(f"the rollout of v{state.version} already ended: {state.status}")
    delta = {
        name: since(
            readings.get(name, VariantStats()),
            _stats_from_dict(state.base[name]) if name in state.base else VariantStats(),
        )
        for name in ("champion", "challenger")
    }
    champion, concurrent = delta["champion"], True
    if champion.requests < cfg.min_requests or cfg.steps[state.step] >= 100:
        # too few champion requests to compare side by side (at 100 % it gets only the stragglers of the
        # weight change): compare with its last full step, or judge the challenger's errors alone
        concurrent = False
        champion = _stats_from_dict(state.champion_ref) if state.champion_ref is not None else VariantStats()
    decision = judge_step(
        cfg,
        state.step,
        champion,
        delta["challenger"],
        now - state.step_started_at,
        now - state.started_at,
        concurrent=concurrent,
        lower_is_better=lower_is_better,
    )
    if decision.action != "hold":
        state.decisions.append(
            {
                "step": state.step,
                "percent": cfg.steps[state.step],
                "action": decision.action,
                "reason": decision.reason,
                "figures": decision.figures,
                "at": now,
            }
        )
    if decision.action == "continue":
        if delta["champion"].requests >= cfg.min_requests:
            state.champion_ref = _stats_to_dict(delta["champion"])
        state.step += 1
        state.step_started_at = now
        state.base = {k: _stats_to_dict(v) for k, v in readings.items()}
    elif decision.action == "promote":
        state.status = "promoted"
    elif decision.action == "rollback":
        state.status = "rolled_back"
    return decision


def _join_text(col: Any) -> Any:
    """One text per key value on both sides of a join: numbers as floats (2013 and 2013.0 alike),
    timestamps as UTC ISO text (a stored timestamp and its ISO text from a logged request alike)."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(col):
        return _utc_text(pd.to_datetime(col, utc=True))
    num = pd.to_numeric(col, errors="coerce")
    if num.notna().all():
        return num.astype("float64").map(repr)
    if col.map(lambda v: isinstance(v, str)).all():
        ts = pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601")
        if ts.notna().all():
            return _utc_text(ts)
    return col.astype(str)


def _utc_text(ts: Any) -> Any:
    return ts.dt.strftime("%Y-%m-%dT%H:%M:%S.%f")


def _key_value(value: Any) -> Any:
    """A key value as the outcome partition's format string wants it: whole floats as ints, ISO text
    as a datetime (so ``ds={time:%Y-%m-%d}`` works on a logged request's timestamp)."""
    import datetime as dt

    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return value


#: fewer known outcomes than this give no metric
MIN_LABELED = 50


def outcome_metric(cfg: PipelineConfig) -> Any:
    """``(y_true, y_pred) -> float | None``: the gate metric (``cfg.gate.metric``, any task; its direction
    is :func:`airloop.config.higher_is_better`) on known outcomes; None below :data:`MIN_LABELED` of
    them, when a classifier's outcomes are all of one class, or where the metric is undefined (an R² of
    outcomes that do not vary)."""

    def metric(y: Any, p: Any) -> float | None:
        from airloop.metrics import metrics_for

        if len(y) < MIN_LABELED or (cfg.task.type == "binary_classification" and len(set(y)) < 2):
            return None
        values = metrics_for(cfg.task.type, y, p)
        if cfg.gate.metric not in values:
            raise ValueError(
                f"gate.metric {cfg.gate.metric!r} of {cfg.name} is not computed for "
                f"{cfg.task.type}: pick one of {sorted(values)}"
            )
        value = float(values[cfg.gate.metric])
        return value if math.isfinite(value) else None

    return metric


def known_outcomes(cfg: PipelineConfig, root: DataRoot, key_rows: Iterable[dict[str, Any]]) -> Any:
    """The outcomes (``deployment.outcome_key`` columns + ``y``) of the raw partitions the rows refer to
    (``deployment.outcome_partition``) that have been ingested; None when none has."""
    from airloop.datasets import load_partitions
    from airloop.features import label

    key = list(cfg.deployment.outcome_key)

    def partition(row: dict[str, Any]) -> str | None:
        try:
            vals = {k: _key_value(row[k]) for k in key}
            return cfg.deployment.outcome_partition.format(**vals)
        except (KeyError, ValueError, TypeError):
            return None

    parts = sorted({p for row in key_rows if (p := partition(row))})
    known = tuple(p for p in parts if root.exists(root.manifest(root.raw(cfg.name, p))))
    if not known:
        return None
    raw = load_partitions(root, "raw", cfg.name, known)
    return raw[key].assign(y=label(raw, cfg.task.label.source_column, cfg.task.label.positive_above))


def online_metrics(
    entries: list[dict[str, Any]], outcomes: Any, key: list[str], metric_fn: Any, since_iso: str
) -> dict[str, dict[str, Any]]:
    """Per variant, the metric of the predictions logged since ``since_iso`` whose outcome is known.

    :param entries: prediction log records (``timestamp``, ``variant``, ``inputs``, ``output``)
    :param outcomes: a DataFrame of ``key`` columns plus ``y`` (the realized label; NaN if unknown)
    :param metric_fn: ``(y_true, y_pred) -> float | None`` (see :func:`outcome_metric`)
    :returns: ``{variant: {"value": float | None, "labeled": n}}``
    """
    import pandas as pd

    rows = [
        {**{k: e["inputs"].get(k) for k in key}, "variant": e["variant"], "p": e["output"]}
        for e in entries
        if e["timestamp"] >= since_iso and all(k in e.get("inputs", {}) for k in key)
    ]
    out: dict[str, dict[str, Any]] = {}
    if not rows or outcomes is None or len(outcomes) == 0:
        return out
    joined = join_outcomes(pd.DataFrame(rows), outcomes, key)
    for variant, g in joined.groupby("variant"):
        out[str(variant)] = {"value": metric_fn(g["y"].to_numpy(), g["p"].to_numpy()), "labeled": int(len(g))}
    return out


def join_outcomes(preds: Any, outcomes: Any, key: list[str]) -> Any:
    """Predictions (``key`` columns + anything) inner-joined with known outcomes (``key`` + ``y``)."""
    known = outcomes.dropna(subset=["y"]).drop_duplicates(subset=key).copy()
    preds = preds.copy()
    for k in key:  # the same text on both sides of the join (2013 and 2013.0 alike)
        preds[k], known[k] = _join_text(preds[k]), _join_text(known[k])
    return preds.merge(known[[*key, "y"]], on=key, how="inner")
