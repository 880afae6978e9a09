"""The training recipe against a logistic regression on the same features, across windows of 2013.

For each window (the pipeline's split: the last 20 % of the days are the holdout, the last 15 % of the
remaining rows by time the validation split) and seeds 13, 14, 15, in one run:

* ``logistic``: scikit-learn ``LogisticRegression(C=1)`` on the standard preprocessing (standardised
  numeric columns, one-hot categoricals), fitted on the training + validation rows (the rows the refit
  sees): the baseline the flow test computes;
* ``logistic+pw``: the same with the model's piecewise-linear encoding of the time of day added, to show
  how much of the model's lead is that encoding alone;
* ``before``: the recipe of two changes ago (no linear start, learning rate 3e-3, no piecewise encoding);
* ``linear``: the wide part starts from the L2 logistic solution, the deep output from zero (learning
  rate 1e-3), no piecewise encoding;
* ``now``: ``TrainRequest``'s defaults (the linear start plus the piecewise encoding of the time of day).

Prints the holdout ROC AUC of each, then per recipe the mean, the worst gap to the logistic regression
and how many of the seed runs are ahead of it.

Run:  .venv/bin/python benchmarks/bench_model_vs_logistic.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time

WINDOWS = [(21, dt.date(2013, m, 21)) for m in (1, 5, 7)] + [
    (60, dt.date(2013, 2, 28)),
    (60, dt.date(2013, 4, 30)),
    (60, dt.date(2013, 6, 30)),
    (60, dt.date(2013, 8, 31)),
    (60, dt.date(2013, 10, 31)),
    (60, dt.date(2013, 12, 31)),
]
SEEDS = (13, 14, 15)
#: TrainRequest overrides, and whether the config's piecewise encoding is used
RECIPES = {"before": ({"linear_start": False, "learning_rate": 3e-3}, False), "linear": ({}, False), "now": ({}, True)}


def window(year, days: int, end: dt.date):
    """Train, validation and holdout feature frames of ``days`` days ending at ``end``."""
    import pandas as pd

    from airloop.config import get_pipeline
    from airloop.features import compute_features, label
    from airloop.training.train import split_partitions, split_validation

    cfg = get_pipeline("flight_delays")
    date = pd.to_datetime(year[["year", "month", "day"]]).dt.date
    start = end - dt.timedelta(days=days - 1)
    raw = year[(date >= start) & (date <= end)]
    f = compute_features(raw, cfg.features, keep=["time_hour"])
    f["y"] = label(raw, "arr_delay", 15)
    f["_partition"] = [f"ds={d}" for d in date[raw.index]]
    f = f[f["y"].notna()]
    train_parts, hold_parts = split_partitions(tuple(sorted(set(f["_partition"]))), 0.2)
    train, val = split_validation(f[f["_partition"].isin(train_parts)], "y", 0.15, cfg.event_time)
    return train, val, f[f["_partition"].isin(hold_parts)]


def logistic_auc(train, val, hold, piecewise: tuple[str, ...] = ()) -> float:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from airloop.config import get_pipeline
    from airloop.features import categorical_features, numeric_features
    from airloop.training.model import Preprocessor

    features = get_pipeline("flight_delays").features
    full = pd.concat([train, val], ignore_index=True)
    pre = Preprocessor(numeric_features(features), categorical_features(features), piecewise=list(piecewise)).fit(full)
    lr = LogisticRegression(C=1.0, max_iter=5000).fit(pre.transform(full), full["y"])
    return float(roc_auc_score(hold["y"], lr.predict_proba(pre.transform(hold))[:, 1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the three 21-day windows only")
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    from airloop.config import get_pipeline
    from airloop.sources.nycflights13 import load_flights_with_weather
    from airloop.training.request import TrainRequest
    from airloop.training.trainer import fit, predict

    features = get_pipeline("flight_delays").features

    year = load_flights_with_weather()
    year = year.assign(time_hour=year["time_hour"].dt.tz_localize(None))
    windows = WINDOWS[:3] if args.quick else WINDOWS
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; holdout ROC AUC, seeds {SEEDS}\n")
    print(
        f"{'window':24s} {'train rows':>10s} {'logistic':>9s} {'logistic+pw':>11s}  "
        + "  ".join(f"{r + ' (3 seeds)':>24s}" for r in RECIPES)
    )
    gaps: dict[str, list[float]] = {r: [] for r in RECIPES}
    pw_gaps: list[float] = []
    aucs: dict[str, list[float]] = {r: [] for r in RECIPES}
    seconds: dict[str, float] = dict.fromkeys(RECIPES, 0.0)
    for days, end in windows:
        train, val, hold = window(year, days, end)
        lr_auc = logistic_auc(train, val, hold)
        pw_auc = logistic_auc(train, val, hold, features.piecewise)
        pw_gaps.append(pw_auc - lr_auc)
        cells = []
        for name, (overrides, piecewise) in RECIPES.items():
            recipe_features = features if piecewise else features.model_copy(update={"piecewise": ()})
            scores = []
            for seed in SEEDS:
                req = TrainRequest(
                    model="", data_root="", partitions=(), run_key="", tracking_uri="", seed=seed, **overrides
                )
                t = time.perf_counter()
                r = fit(req, "binary_classification", train, val, "y", recipe_features)
                seconds[name] += time.perf_counter() - t
                scores.append(float(roc_auc_score(hold["y"], predict(r.net, r.pre, hold, "binary_classification"))))
            aucs[name] += scores
            gaps[name] += [s - lr_auc for s in scores]
            cells.append(" ".join(f"{s:.4f}" for s in scores))
        label = f"{days} days to {end}"
        print(
            f"{label:24s} {len(train) + len(val):>10d} {lr_auc:>9.4f} {pw_auc:>11.4f}  "
            + "  ".join(f"{c:>24s}" for c in cells),
            flush=True,
        )
    print()
    for name in RECIPES:
        g = gaps[name]
        print(
            f"{name:7s} mean ROC AUC {statistics.mean(aucs[name]):.4f}; vs logistic: mean {statistics.mean(g):+.4f}, "
            f"worst {min(g):+.4f}, best {max(g):+.4f}, ahead in {sum(x > 0 for x in g)}/{len(g)} runs; "
            f"{seconds[name]:.1f} s of training"
        )
    print(
        f"logistic+pw vs logistic: mean {statistics.mean(pw_gaps):+.4f}, worst {min(pw_gaps):+.4f}, "
        f"ahead in {sum(x > 0 for x in pw_gaps)}/{len(pw_gaps)} windows"
    )
    print(
        f"\nnow vs before: mean ROC AUC {statistics.mean(aucs['now']) / statistics.mean(aucs['before']):.3f}x, "
        f"training time {seconds['now'] / seconds['before']:.2f}x"
    )


if __name__ == "__main__":
    main()
