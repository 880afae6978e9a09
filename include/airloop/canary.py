"""Canary analysis: from measured per-variant figures to continue, promote, rollback or hold.

Pure functions over the model server's Prometheus metrics (or KServe's, in production), so every rule is
tested without a server. A step is judged only after ``interval_seconds`` and ``min_requests``
challenger requests; no traffic means hold, never promote; a rollout still holding at its deadline is
rolled back.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from airloop.config import CanaryConfig

_LINE = re.compile(r'^(?P<name>airloop_[a-z_]+)\{(?P<labels>[^}]*)\}\s+(?P<value>[-+0-9.eE]+|\+Inf|NaN)$')


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
        """A latency quantile from the cumulative histogram (upper bucket bound, as Prometheus does)."""
        if not self.latency_buckets:
            return None
        total = max(self.latency_buckets.values())
        if total <= 0:
            return None
        for le in sorted(self.latency_buckets):
            if self.latency_buckets[le] >= q * total:
                return le
        return math.inf


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
    """Population stability index between two cumulative histograms with the same bucket bounds."""
    def shares(cum: dict[float, float]) -> list[float]:
        bounds = sorted(cum)
        counts = [cum[b] - (cum[bounds[i - 1]] if i else 0.0) for i, b in enumerate(bounds)]
        total = sum(counts) or 1.0
        return [max(c / total, eps) for c in counts]

    if not expected or not actual:
        return 0.0
    e, a = shares(expected), shares(actual)
    return float(sum((ai - ei) * math.log(ai / ei) for ai, ei in zip(a, e, strict=True)))


@dataclass(frozen=True)
class StepDecision:
    action: str  # continue | promote | rollback | hold
    reason: str
    figures: dict[str, Any]


def judge_step(cfg: CanaryConfig, step: int, champion: VariantStats, challenger: VariantStats,
               elapsed_s: float, rollout_elapsed_s: float) -> StepDecision:
    """Judge one canary step (``step`` indexes ``cfg.steps``) from the figures measured during it."""
    lat_c, lat_n = champion.quantile(0.99), challenger.quantile(0.99)
    figures = {
        "step_percent": cfg.steps[step], "challenger_requests": challenger.requests, "champion_requests": champion.requests,
        "challenger_5xx_rate": round(challenger.error_rate, 4), "champion_5xx_rate": round(champion.error_rate, 4),
        "p99_latency_s": {"champion": lat_c, "challenger": lat_n},
        "prediction_psi": round(psi(champion.prediction_buckets, challenger.prediction_buckets), 4),
        "online_metric": {"champion": champion.online_metric, "challenger": challenger.online_metric},
    }
    seen = challenger.requests + challenger.server_errors
    if challenger.error_rate > cfg.max_5xx_rate and seen >= min(cfg.min_requests, 20):
        return StepDecision("rollback", f"challenger 5xx rate {challenger.error_rate:.2%} > {cfg.max_5xx_rate:.2%}", figures)
    if seen < cfg.min_requests or elapsed_s < cfg.interval_seconds:
        if rollout_elapsed_s >= cfg.deadline_minutes * 60:
            return StepDecision("rollback", f"deadline of {cfg.deadline_minutes} min reached while holding "
                                f"({seen:.0f} of {cfg.min_requests} challenger requests)", figures)
        return StepDecision("hold", f"waiting: {seen:.0f}/{cfg.min_requests} challenger requests, "
                            f"{elapsed_s:.0f}/{cfg.interval_seconds} s", figures)
    if lat_c and lat_n and lat_c not in (0, math.inf) and lat_n / lat_c > cfg.max_p99_latency_ratio:
        return StepDecision("rollback", f"challenger p99 latency {lat_n}s is {lat_n / lat_c:.1f}x the champion's "
                            f"(at most {cfg.max_p99_latency_ratio}x)", figures)
    if figures["prediction_psi"] > cfg.max_prediction_psi:
        return StepDecision("rollback", f"challenger predictions shifted: PSI {figures['prediction_psi']} > "
                            f"{cfg.max_prediction_psi}", figures)
    if champion.online_metric is not None and challenger.online_metric is not None \
            and champion.online_metric - challenger.online_metric > cfg.max_online_metric_drop:
        return StepDecision("rollback", f"online metric {challenger.online_metric:.4f} vs champion "
                            f"{champion.online_metric:.4f} (at most {cfg.max_online_metric_drop} lower)", figures)
    if step == len(cfg.steps) - 1:
        return StepDecision("promote", f"healthy at {cfg.steps[step]}% of traffic", figures)
    return StepDecision("continue", f"healthy at {cfg.steps[step]}%; next {cfg.steps[step + 1]}%", figures)
