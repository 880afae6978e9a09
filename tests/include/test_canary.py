from __future__ import annotations

import pytest

from airloop.canary import VariantStats, judge_step, parse_metrics, psi
from airloop.config import CanaryConfig

pytestmark = pytest.mark.unit

CFG = CanaryConfig(min_requests=100, interval_seconds=60, deadline_minutes=30)
LAT = {0.01: 0, 0.025: 90, 0.05: 99, 0.1: 100, float("inf"): 100}  # p99 = 50 ms
PRED = {0.1: 10, 0.2: 40, 0.3: 70, 0.5: 95, 1.0: 100, float("inf"): 100}


def stats(requests=1000, errors=0, lat=LAT, pred=PRED, metric=None):
    return VariantStats(requests, errors, dict(lat), dict(pred), metric)


def test_healthy_steps_continue_then_promote():
    assert judge_step(CFG, 0, stats(), stats(200), 120, 120).action == "continue"
    d = judge_step(CFG, 3, stats(), stats(500), 120, 600)
    assert d.action == "promote" and d.figures["step_percent"] == 100


@pytest.mark.parametrize(
    ("challenger", "words"),
    [
        (stats(180, 20), "5xx rate"),  # fails 10% of requests
        (stats(lat={0.01: 0, 0.5: 0, 1.0: 99, 2.5: 100, float("inf"): 100}), "p99 latency"),  # +600 ms or more
        (stats(pred={0.1: 0, 0.2: 0, 0.3: 0, 0.5: 0, 1.0: 100, float("inf"): 100}), "predictions shifted"),  # constant
        (stats(metric=0.60), "online metric"),
    ],
)
def test_unhealthy_challengers_are_rolled_back(challenger, words):
    d = judge_step(CFG, 1, stats(metric=0.70), challenger, 120, 300)
    assert d.action == "rollback" and words in d.reason


def test_no_traffic_holds_and_the_deadline_rolls_back():
    assert judge_step(CFG, 0, stats(), stats(0), 600, 600).action == "hold"
    assert judge_step(CFG, 0, stats(), stats(500), 10, 10).action == "hold"  # too early to judge
    d = judge_step(CFG, 0, stats(), stats(5), 3600, 31 * 60)
    assert d.action == "rollback" and "deadline" in d.reason


def test_psi_of_identical_histograms_is_zero():
    assert psi(PRED, PRED) == pytest.approx(0.0)
    assert psi(PRED, {0.1: 0, 0.2: 0, 0.3: 0, 0.5: 0, 1.0: 100, float("inf"): 100}) > 1.0


def test_parse_the_servers_metrics():
    from airloop.serving.server import LATENCY_BUCKETS, PREDICTION_BUCKETS, Metrics

    m = Metrics()
    for v, lat, n in (("champion", 0.02, 50), ("challenger", 0.8, 10)):
        for _ in range(n):
            m.inc("requests", v)
            m.observe("request_latency_seconds", v, lat, LATENCY_BUCKETS)
            m.observe("prediction", v, 0.3, PREDICTION_BUCKETS)
    m.inc("server_errors", "challenger", 2)
    parsed = parse_metrics(m.render())
    assert parsed["champion"].requests == 50 and parsed["challenger"].server_errors == 2
    assert parsed["champion"].quantile(0.99) == 0.025 and parsed["challenger"].quantile(0.99) == 1.0
    assert parsed["challenger"].error_rate == pytest.approx(2 / 12)
