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
    # interpolated inside the bucket that holds the rank, as histogram_quantile() does
    assert parsed["champion"].quantile(0.99) == pytest.approx(0.01 + 0.015 * 49.5 / 50)
    assert parsed["challenger"].quantile(0.99) == pytest.approx(0.5 + 0.5 * 9.9 / 10)
    assert parsed["challenger"].error_rate == pytest.approx(2 / 12)


# --- the rollout state machine over cumulative readings ------------------------------------------------


def cum(requests, errors=0, lat=LAT, pred=PRED):
    """Cumulative readings scaled to ``requests`` (histograms scaled like the counter)."""
    k = requests / 100.0
    return VariantStats(requests, errors, {b: c * k for b, c in lat.items()}, {b: c * k for b, c in pred.items()})


def test_a_healthy_rollout_walks_every_step_then_promotes():
    from airloop.canary import Rollout, advance, start_rollout

    st = start_rollout("m", "3", "2", {}, now=0.0)
    t, champ, chall, actions = 0.0, 0, 0, []
    for pct in CFG.steps:
        t += 61
        chall += 150  # each step sees enough challenger traffic after the interval
        champ += 0 if pct == 100 else 1000
        d = advance(st, CFG, {"champion": cum(champ), "challenger": cum(chall)}, t)
        actions.append(d.action)
    assert actions == ["continue", "continue", "continue", "promote"] and st.status == "promoted"
    assert [x["percent"] for x in st.decisions] == [10, 25, 50, 100]
    # at 100 % the champion had no traffic: it was compared with its figures from the 50 % step
    assert st.decisions[-1]["figures"]["p99_latency_s"]["champion"] is not None
    assert Rollout.from_dict(st.to_dict()) == st  # the state survives its JSON round trip
    with pytest.raises(ValueError, match="already ended"):
        advance(st, CFG, {}, t + 1)


def test_a_step_is_judged_on_its_own_traffic_not_the_totals():
    from airloop.canary import advance, start_rollout

    st = start_rollout("m", "3", "2", {"champion": cum(5000), "challenger": cum(0)}, now=0.0)
    assert advance(st, CFG, {"champion": cum(6000), "challenger": cum(150)}, 61).action == "continue"
    # the next step starts from these readings: 150 more requests, 20 of them errors -> rollback
    d = advance(st, CFG, {"champion": cum(7000), "challenger": cum(280, errors=20)}, 130)
    assert d.action == "rollback" and "5xx rate" in d.reason and st.status == "rolled_back"
    assert d.figures["challenger_requests"] == 130 and d.figures["step_percent"] == 25


def test_a_server_restart_resets_counters_without_confusing_the_step():
    from airloop.canary import advance, start_rollout

    st = start_rollout("m", "3", "2", {"champion": cum(5000), "challenger": cum(400)}, now=0.0)
    d = advance(st, CFG, {"champion": cum(900), "challenger": cum(120)}, 61)  # counters went down: restarted
    assert d.action == "continue" and d.figures["challenger_requests"] == 120


def test_no_traffic_holds_until_the_deadline():
    from airloop.canary import advance, start_rollout

    st = start_rollout("m", "3", "2", {}, now=0.0)
    assert advance(st, CFG, {}, 120).action == "hold" and st.status == "running" and st.decisions == []
    d = advance(st, CFG, {}, CFG.deadline_minutes * 60 + 1)
    assert d.action == "rollback" and "deadline" in d.reason


def test_a_prediction_shift_with_a_better_online_metric_is_the_improvement_not_a_fault():
    shifted = {0.1: 0, 0.2: 5, 0.3: 10, 0.5: 40, 1.0: 100, float("inf"): 100}
    assert psi(PRED, shifted) > CFG.max_prediction_psi
    better = judge_step(CFG, 0, stats(metric=0.70), stats(200, pred=shifted, metric=0.74), 120, 120)
    assert better.action == "continue", better.reason
    unknown = judge_step(CFG, 0, stats(), stats(200, pred=shifted), 120, 120)  # no outcomes: the shift rolls back
    assert unknown.action == "rollback" and "predictions shifted" in unknown.reason


# --- latency: the tail quantile a step's sample can support -------------------------------------------


def lat_hist(n_fast, n_mid, n_slow):
    """Cumulative latency buckets: ``n_fast`` requests at 25-50 ms, ``n_mid`` at 100-250 ms, ``n_slow`` at 0.5-1 s."""
    total = n_fast + n_mid + n_slow
    return {
        0.025: 0,
        0.05: n_fast,
        0.1: n_fast,
        0.25: n_fast + n_mid,
        0.5: n_fast + n_mid,
        1.0: total,
        float("inf"): total,
    }


def test_the_judged_latency_quantile_leaves_enough_requests_above_it():
    from airloop.canary import tail_quantile

    assert tail_quantile(0.99, 300, 10) == pytest.approx(1 - 10 / 300)
    assert tail_quantile(0.99, 1000, 10) == pytest.approx(0.99)
    assert tail_quantile(0.99, 50_000, 10) == 0.99
    assert tail_quantile(0.99, 300, 0) == 0.99  # 0: always the p99
    assert tail_quantile(0.99, 12, 10) == 0.5  # never below the median


def test_a_few_stalled_requests_among_300_do_not_roll_back_the_same_model():
    # The same model on both sides; 4 of the challenger's 300 requests were caught in process stalls
    # (0.5-1 s), as on a busy 2-core machine: the p99 of 300 is decided by its top 3 requests.
    champion = VariantStats(900, 0, lat_hist(890, 9, 1), dict(PRED))
    challenger = VariantStats(300, 0, lat_hist(293, 3, 4), dict(PRED))
    d = judge_step(CFG, 1, champion, challenger, 120, 300)
    assert d.action == "continue", d.reason
    assert d.figures["latency_quantile"] == pytest.approx(1 - 10 / 300, abs=1e-4)
    # the same figures judged at the bare p99 would have rolled it back: this is the case the rule is for
    p99_only = judge_step(CFG.model_copy(update={"latency_min_tail_requests": 0}), 1, champion, challenger, 120, 300)
    assert p99_only.action == "rollback" and "p99 latency" in p99_only.reason


def test_a_slow_tail_is_rolled_back_once_a_step_has_the_requests_to_see_it():
    # 3 % of the challenger's requests take 0.5-1 s: a real tail regression
    champion = VariantStats(5000, 0, lat_hist(4960, 40, 0), dict(PRED))
    few = VariantStats(200, 0, lat_hist(194, 0, 6), dict(PRED))  # 6 of 200: p95 judged, under it
    assert judge_step(CFG, 1, champion, few, 120, 300).action == "continue"
    many = VariantStats(2000, 0, lat_hist(1940, 0, 60), dict(PRED))
    d = judge_step(CFG, 1, champion, many, 120, 300)
    assert d.action == "rollback" and "p99 latency" in d.reason and d.figures["latency_quantile"] == 0.99


# --- regression through the server and the rollout: PSI over the champion's quantile bounds -----------


class Regressor:
    """A stub regression model: predictions ``center + sd * N(0, 1)``, whatever the input; its
    ``prediction_edges`` are the deciles of its own reference predictions, as training writes them."""

    def __init__(self, center: float, sd: float = 10.0, seed: int = 0, edges: bool = True):
        import numpy as np

        self.center, self.sd, self.rng = center, sd, np.random.default_rng(seed)
        ref = center + sd * np.random.default_rng(seed + 1000).standard_normal(2000)
        self.prediction_edges = (
            sorted(float(q) for q in np.quantile(ref, [i / 10 for i in range(1, 10)])) if edges else None
        )

    def predict(self, df):
        import pandas as pd

        return pd.DataFrame({"prediction": self.center + self.sd * self.rng.standard_normal(len(df))})


REG_CFG = CanaryConfig(min_requests=40, interval_seconds=1, deadline_minutes=30)


def regression_service(champion, challenger):
    from airloop.serving.server import ModelService, Variant

    return ModelService(
        "stub_regression",
        Variant("champion", "1", champion),
        Variant("challenger", "2", challenger),
        0.0,
        None,
        seed=11,
        request_columns=["x"],
    )


def serve_step(service, percent, challenger_requests=60, rows=4, t=0):
    """Set the challenger's share and send enough requests for about ``challenger_requests`` of them."""
    import json

    service.set_weight(percent / 100)
    body = json.dumps({"dataframe_records": [{"x": i} for i in range(rows)]}).encode()
    for i in range(int(challenger_requests * 100 / percent)):
        status, out = service.invoke(body, "application/json", f"t{t}-{i}")
        assert status == 200, out


def run_rollout(service, cfg=REG_CFG):
    from airloop.canary import advance, start_rollout
    from airloop.config import higher_is_better

    state = start_rollout("stub_regression", "2", "1", parse_metrics(service.metrics.render()), now=0.0)
    t, decisions = 0.0, []
    for percent in cfg.steps:
        serve_step(service, percent, t=t)
        t += 10
        d = advance(
            state, cfg, parse_metrics(service.metrics.render()), t, lower_is_better=not higher_is_better("rmse")
        )
        decisions.append(d)
        if d.action != "continue":
            break
    return state, decisions


def test_a_regression_challenger_shifted_by_two_sd_is_rolled_back_on_its_predictions():
    champion = Regressor(60.0, 10.0, seed=1)
    shifted = Regressor(60.0 + 2 * 10.0, 10.0, seed=2)  # its own edges are not used: the champion's are
    state, decisions = run_rollout(regression_service(champion, shifted))
    d = decisions[-1]
    assert d.action == "rollback" and state.status == "rolled_back" and len(decisions) == 1, d.reason
    assert "predictions shifted: PSI" in d.reason and d.figures["prediction_psi"] > 1.0
    assert d.figures["challenger_requests"] >= REG_CFG.min_requests


def test_a_healthy_regression_challenger_is_promoted_through_every_step():
    state, decisions = run_rollout(regression_service(Regressor(60.0, 10.0, seed=1), Regressor(60.0, 10.0, seed=2)))
    assert [d.action for d in decisions] == ["continue", "continue", "continue", "promote"], decisions[-1].reason
    assert state.status == "promoted"
    psis = [x["figures"]["prediction_psi"] for x in state.decisions]
    assert all(p < REG_CFG.max_prediction_psi for p in psis[:-1]) and psis[-1] is None  # 100 %: no concurrent champion


def test_fixed_buckets_saw_no_shift_at_a_regression_scale_and_the_champions_quantiles_do():
    from airloop.serving.server import PREDICTION_BUCKETS

    old = regression_service(Regressor(60.0, 10.0, seed=1, edges=False), Regressor(300.0, 10.0, seed=2))
    new = regression_service(Regressor(60.0, 10.0, seed=1), Regressor(300.0, 10.0, seed=2))
    for service in (old, new):
        serve_step(service, 50)
    before, after = parse_metrics(old.metrics.render()), parse_metrics(new.metrics.render())
    assert sorted(before["champion"].prediction_buckets) == [*PREDICTION_BUCKETS, float("inf")]  # a stub without edges
    assert psi(before["champion"].prediction_buckets, before["challenger"].prediction_buckets) == 0.0  # all above 1.0
    assert psi(after["champion"].prediction_buckets, after["challenger"].prediction_buckets) > 5.0


def test_a_new_champions_bounds_reset_the_step_s_prediction_histograms():
    from airloop.canary import advance, since, start_rollout
    from airloop.serving.server import Variant

    service = regression_service(Regressor(60.0, 10.0, seed=1), Regressor(60.0, 10.0, seed=2))
    serve_step(service, 50, t=-1)
    state = start_rollout("stub_regression", "2", "1", parse_metrics(service.metrics.render()), now=0.0)
    base = parse_metrics(service.metrics.render())
    # the server loads a champion with other bounds (another scale) mid-step: the prediction histograms
    # restart over the new bounds while the request counters go on
    service.reload(Variant("champion", "5", Regressor(500.0, 50.0, seed=3)), service.variants["challenger"])
    service.variants["challenger"] = Variant("challenger", "2", Regressor(500.0, 50.0, seed=4))
    serve_step(service, 50, t=1)
    now = parse_metrics(service.metrics.render())
    delta = since(now["challenger"], base["challenger"])
    assert delta.prediction_buckets == now["challenger"].prediction_buckets  # the new histogram is the delta
    assert delta.requests == now["challenger"].requests - base["challenger"].requests  # counters were not reset
    assert all(v >= 0 for v in delta.prediction_buckets.values())
    d = advance(state, REG_CFG, now, 10)
    assert d.action == "continue" and d.figures["prediction_psi"] < REG_CFG.max_prediction_psi, d.reason


def test_psi_on_cumulative_histograms_with_any_bounds():
    champion = {-5.0: 10, 0.0: 50, 5.0: 90, float("inf"): 100}
    assert psi(champion, champion) == pytest.approx(0.0)
    assert psi(champion, {-5.0: 0, 0.0: 0, 5.0: 0, float("inf"): 100}) > 1.0
    # different bounds on the two sides: compared on the ones both have (here -5 and +Inf)
    assert psi(champion, {-5.0: 10, 1.0: 40, float("inf"): 100}) == pytest.approx(0.0)


# --- the online metric for regression ------------------------------------------------------------------


def regression_cfg(metric):
    from airloop.config import get_pipeline

    cfg = get_pipeline("flight_delays")
    task = cfg.task.model_copy(
        update={"type": "regression", "label": cfg.task.label.model_copy(update={"positive_above": None})}
    )
    return cfg.model_copy(update={"task": task, "gate": cfg.gate.model_copy(update={"metric": metric})})


def test_the_online_metric_of_a_regression_model_and_its_direction():
    import numpy as np
    import pandas as pd

    from airloop.canary import MIN_LABELED, online_metrics, outcome_metric

    rng = np.random.default_rng(0)
    y = 60 + 10 * rng.standard_normal(200)
    entries = [
        {"timestamp": "2024-01-01T00:00:00", "variant": v, "inputs": {"id": i}, "output": float(y[i] + err)}
        for i in range(200)
        for v, err in (("champion", rng.normal(0, 2)), ("challenger", rng.normal(0, 8)))
    ]
    outcomes = pd.DataFrame({"id": range(200), "y": y})
    rmse = online_metrics(entries, outcomes, ["id"], outcome_metric(regression_cfg("rmse")), "2024-01-01")
    assert rmse["champion"]["labeled"] == 200 and rmse["champion"]["value"] < 3 < 6 < rmse["challenger"]["value"]
    r2 = online_metrics(entries, outcomes, ["id"], outcome_metric(regression_cfg("r2")), "2024-01-01")
    assert r2["champion"]["value"] > r2["challenger"]["value"]
    # one outcome value repeated is no reason for "no metric" in regression (it is for a classifier's AUC),
    # but R² of outcomes that do not vary is undefined
    flat = np.full(MIN_LABELED, 5.0)
    assert outcome_metric(regression_cfg("mae"))(flat, flat + 1) == pytest.approx(1.0)
    assert outcome_metric(regression_cfg("r2"))(flat, flat + 1) is None
    assert outcome_metric(regression_cfg("rmse"))(y[: MIN_LABELED - 1], y[: MIN_LABELED - 1]) is None
    # RMSE is lower-is-better: a higher challenger RMSE rolls back, a lower one continues
    champ, chall = rmse["champion"]["value"], rmse["challenger"]["value"]
    worse = judge_step(CFG, 0, stats(metric=champ), stats(200, metric=chall), 120, 120, lower_is_better=True)
    assert worse.action == "rollback" and "online metric" in worse.reason and "higher" in worse.reason
    better = judge_step(CFG, 0, stats(metric=chall), stats(200, metric=champ), 120, 120, lower_is_better=True)
    assert better.action == "continue", better.reason


def test_a_relative_online_tolerance_follows_the_target_scale():
    """0.03 in the target's units is noise for an RMSE of 100 riders: the ratio form allows 10 % of it."""
    rel = CFG.model_copy(update={"max_online_metric_drop_ratio": 0.1})
    noise = judge_step(rel, 0, stats(metric=100.0), stats(200, metric=104.0), 120, 120, lower_is_better=True)
    assert noise.action == "continue", noise.reason
    absolute = judge_step(CFG, 0, stats(metric=100.0), stats(200, metric=104.0), 120, 120, lower_is_better=True)
    assert absolute.action == "rollback"
    worse = judge_step(rel, 0, stats(metric=100.0), stats(200, metric=111.0), 120, 120, lower_is_better=True)
    assert worse.action == "rollback" and "at most 10 higher" in worse.reason


def test_outcomes_join_on_a_timestamp_key_logged_as_iso_text(tmp_path):
    """A model whose rows are identified by their time: requests log it as ISO text, the raw partition
    stores a timestamp; the partition is found from the text and the two join."""
    import pandas as pd

    from airloop.canary import join_outcomes, known_outcomes
    from airloop.storage import DataRoot

    cfg = regression_cfg("rmse")
    dep = cfg.deployment.model_copy(
        update={"outcome_key": ("time_hour",), "outcome_partition": "ds={time_hour:%Y-%m-%d}"}
    )
    cfg = cfg.model_copy(update={"deployment": dep})
    root = DataRoot(tmp_path)
    stored = pd.DataFrame(
        {"time_hour": pd.to_datetime(["2013-01-05 10:00", "2013-01-05 11:00"]), "arr_delay": [5.0, 7.0]}
    )
    root.write_partition(
        root.partition_uri("raw", cfg.name, "ds=2013-01-05"),
        {"data.parquet": stored.to_parquet(index=False)},
        {"data_file": "data.parquet"},
    )
    logged = [{"time_hour": "2013-01-05T10:00:00.000"}, {"time_hour": "2013-01-05T11:00:00Z"}]
    outcomes = known_outcomes(cfg, root, logged)
    assert outcomes is not None and len(outcomes) == 2
    joined = join_outcomes(
        pd.DataFrame({"time_hour": [r["time_hour"] for r in logged], "p": [4.0, 9.0]}), outcomes, ["time_hour"]
    )
    assert sorted(zip(joined["p"], joined["y"], strict=True)) == [(4.0, 5.0), (9.0, 7.0)]


def test_the_last_step_never_judges_a_handful_of_champion_stragglers():
    """At 100 % the champion answers only the few requests in flight while the weight changed. With no
    full champion step to compare with, the challenger is judged on its own errors, not on a PSI of a
    handful of champion predictions against hundreds of its own."""
    import math

    from airloop.canary import Rollout, VariantStats, _stats_to_dict, advance

    cfg = CanaryConfig(steps=(50, 100), min_requests=100, interval_seconds=1)
    buckets = {0.1: 0.0, 0.5: 0.0, 1.0: 0.0, math.inf: 0.0}
    state = Rollout(
        "m",
        "2",
        "1",
        started_at=0.0,
        step=1,
        step_started_at=0.0,
        base={
            "champion": _stats_to_dict(VariantStats(0, 0, {}, dict(buckets))),
            "challenger": _stats_to_dict(VariantStats(0, 0, {}, dict(buckets))),
        },
    )
    stragglers = VariantStats(5, 0, {0.1: 5.0, math.inf: 5.0}, {0.1: 5.0, 0.5: 5.0, 1.0: 5.0, math.inf: 5.0})
    healthy = VariantStats(400, 0, {0.1: 400.0, math.inf: 400.0}, {0.1: 0.0, 0.5: 0.0, 1.0: 400.0, math.inf: 400.0})
    decision = advance(state, cfg, {"champion": stragglers, "challenger": healthy}, now=60.0)
    assert decision.action == "promote", decision.reason
    assert decision.figures["prediction_psi"] is None
