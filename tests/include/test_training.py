from __future__ import annotations

import math
from pathlib import Path

import pytest

from airloop.training.request import TrainRequest
from airloop.training.train import find_registered, split_partitions, train

pytestmark = pytest.mark.unit


def _req(root, parts, key, uri, **kw):
    return TrainRequest(
        model="flight_delays",
        data_root=root.uri,
        partitions=parts,
        run_key=key,
        tracking_uri=uri,
        lineage={"airloop.dag_id": "test"},
        **kw,
    )


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def two_runs(feature_root, tracking):
    root, parts = feature_root
    a = train(_req(root, parts, "test/run-a", tracking))
    b = train(_req(root, parts, "test/run-b", tracking))
    return a, b


def test_holdout_is_the_latest_days():
    train_p, hold_p = split_partitions(tuple(f"ds=2013-01-{d:02d}" for d in range(10, 0, -1)), 0.2)
    assert hold_p == ("ds=2013-01-09", "ds=2013-01-10") and train_p[-1] == "ds=2013-01-08"
    with pytest.raises(ValueError, match="at least 2 partitions"):
        split_partitions(("ds=2013-01-01",), 0.2)


@pytest.mark.heavy
def test_training_is_deterministic(two_runs, feature_root):
    import mlflow
    import numpy as np
    import pandas as pd

    a, b = two_runs
    assert a["version"] != b["version"]
    assert a["metrics"] == b["metrics"]
    assert a["best_epoch"] == b["best_epoch"]
    ma, mb = (mlflow.pyfunc.load_model(r["model_uri"]) for r in (a, b))
    example = pd.DataFrame(ma.input_example)
    np.testing.assert_array_equal(ma.predict(example)["prediction"], mb.predict(example)["prediction"])


@pytest.mark.heavy
def test_logged_run_has_lineage_signature_and_reference(two_runs, tracking, feature_root):
    from mlflow import MlflowClient

    a, _ = two_runs
    client = MlflowClient(tracking)
    run = client.get_run(a["run_id"])
    tags = run.data.tags
    assert tags["airloop_run_key"] == "test/run-a" and tags["airloop.model"] == "flight_delays"
    assert tags["airloop.feature_version"] and tags["airloop.holdout_partitions"].count("ds=") == len(
        a["holdout_partitions"]
    )
    root, parts = feature_root
    assert tags[f"airloop.partition.{parts[0]}"].startswith("sha256:")
    assert {"train_loss", "val_loss", "val_roc_auc", "holdout_roc_auc"} <= set(run.data.metrics)
    # one value per epoch, and training went on past the best epoch (early stopping) or hit the cap
    assert len(client.get_metric_history(a["run_id"], "val_loss")) >= a["best_epoch"] + 1
    arts = {f.path for f in client.list_artifacts(a["run_id"], "reference")}
    assert "reference/reference_sample.parquet" in arts
    import mlflow

    info = mlflow.models.get_model_info(a["model_uri"])
    assert info.signature is not None and "carrier" in info.signature.inputs.input_names()
    assert 0.6 < a["metrics"]["roc_auc"] < 0.9 and not math.isnan(a["metrics"]["log_loss"])


@pytest.mark.heavy
def test_retry_registers_no_second_version(two_runs, feature_root, tracking):
    from mlflow import MlflowClient

    root, parts = feature_root
    a, _ = two_runs
    again = train(_req(root, parts, "test/run-a", tracking))  # a retried task: same run key
    assert again["version"] == a["version"]
    client = MlflowClient(tracking)
    assert len(client.search_model_versions("name = 'flight_delays' and tags.airloop_run_key = 'test/run-a'")) == 1
    assert str(find_registered(client, "flight_delays", "test/run-a").version) == a["version"]


@pytest.mark.heavy
def test_entrypoint_runs_as_a_command(feature_root, tracking, tmp_path):
    """The exact command the pod runs (`python -m airloop.training.train ...`), as a local process."""
    import json
    import subprocess
    import sys

    root, parts = feature_root
    result = tmp_path / "return.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "airloop.training.train",
            "--model",
            "flight_delays",
            "--data-root",
            root.uri,
            "--partitions",
            ",".join(parts),
            "--run-key",
            "test/run-a",
            "--tracking-uri",
            tracking,
            "--result-file",
            str(result),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(Path(result).read_text())["version"]


@pytest.mark.heavy
@pytest.mark.parametrize("piecewise", [False, True], ids=["standard", "piecewise"])
def test_linear_start_is_the_regularised_logistic_regression(feature_root, cfg, piecewise):
    """With no epoch of joint training, the model is the L2 logistic regression (scikit-learn's objective,
    C=1) on the same matrix: the start every training run is measured against on its validation days.

    It reaches that objective's minimum at least as closely as scikit-learn does. On the standard matrix the
    two give the same predictions; with the piecewise columns the minimum is flat (correlated columns), so
    solutions within 1e-5 of the same objective value can differ by several 1e-3 in a prediction."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from airloop.datasets import load_partitions
    from airloop.training.trainer import fit, predict

    root, parts = feature_root
    df = load_partitions(root, "features", "flight_delays", parts[:14])
    df = df[df["arrived_late"].notna()].sort_values("time_hour", kind="stable").reset_index(drop=True)
    train_df, val_df = df.iloc[:-1500], df.iloc[-1500:]
    features = cfg.features if piecewise else cfg.features.model_copy(update={"piecewise": ()})
    r = fit(
        TrainRequest(model="flight_delays", data_root="", partitions=(), run_key="", tracking_uri="", max_epochs=0),
        "binary_classification",
        train_df,
        val_df,
        "arrived_late",
        features,
    )
    assert r.best_epoch == -1 and r.history == []  # refit = the linear model on train + validation
    assert bool(r.pre.edges) == bool(piecewise)
    full = pd.concat([train_df, val_df], ignore_index=True)
    x, y = r.pre.transform(full).astype(np.float64), full["arrived_late"].to_numpy(dtype=np.float64)
    lr = LogisticRegression(C=1.0, max_iter=10_000, tol=1e-10).fit(x, y)

    def objective(w, b):  # scikit-learn's, C=1: the sum of log losses plus half the squared weights
        z = x @ w + b
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * w @ w)

    wide = r.net.wide
    ours = objective(wide.weight.detach().double().numpy()[0], float(wide.bias.detach()))
    theirs = objective(lr.coef_[0], float(lr.intercept_[0]))
    assert ours <= theirs + 1e-6 * theirs, (ours, theirs)
    if not piecewise:
        np.testing.assert_allclose(
            predict(r.net, r.pre, full, "binary_classification"), lr.predict_proba(x)[:, 1], atol=2e-3
        )
    assert set(r.linear_start_val) >= {"val_loss", "val_roc_auc"}


def test_piecewise_encoding_of_the_time_of_day():
    """Each quantile bin is a column rising 0 -> 1 across it: a linear model on them is a linear spline in
    the feature; the standardised column stays, so values beyond the training range extrapolate linearly."""
    import numpy as np
    import pandas as pd

    from airloop.training.model import Preprocessor

    train = pd.DataFrame({"t": np.arange(0.0, 1000.0), "x": np.linspace(-1, 1, 1000), "c": ["a"] * 1000})
    pre = Preprocessor(["t", "x"], ["c"], piecewise=["t"], bins=4).fit(train)
    assert pre.edges["t"] == pytest.approx([0.0, 249.75, 499.5, 749.25, 999.0])
    plain = Preprocessor(["t", "x"], ["c"]).fit(train)
    assert pre.width == plain.width + 4 and plain.edges == {}
    rows = pd.DataFrame({"t": [-50.0, 0.0, 374.625, 999.0, 2000.0, np.nan], "x": [0.0] * 6, "c": ["a"] * 6})
    out = pre.transform(rows)
    np.testing.assert_array_equal(out[:, : plain.width], plain.transform(rows))
    np.testing.assert_allclose(
        out[:, plain.width :],
        [
            [0, 0, 0, 0],  # below the range: every bin 0, the standardised column carries it
            [0, 0, 0, 0],
            [1, 0.5, 0, 0],  # halfway through the second bin
            [1, 1, 1, 1],
            [1, 1, 1, 1],  # above: saturated
            [1, 1, 0, 0],  # missing -> the training mean (499.5), the second bin's upper edge
        ],
        atol=1e-6,
    )
    assert Preprocessor.from_json(pre.to_json()) == pre  # what the pyfunc loads
    # columns in the order of ``piecewise``, also after the JSON round trip (which sorts the keys of ``edges``)
    two = Preprocessor(["t", "x"], ["c"], piecewise=["x", "t"], bins=4).fit(train)
    np.testing.assert_array_equal(Preprocessor.from_json(two.to_json()).transform(train), two.transform(train))
    with pytest.raises(ValueError, match="not one of the numeric features"):
        Preprocessor(["x"], ["c"], piecewise=["t"]).fit(train)


@pytest.mark.heavy
def test_a_regression_target_in_the_hundreds_is_learnt_standardised():
    """Counts around 300 with a non-linear shape: the net learns the standardised target and answers in
    the target's units; it beats the linear model it starts from (ridge on the same matrix)."""
    import numpy as np
    import pandas as pd

    from airloop.features import FeaturesConfig
    from airloop.metrics import metrics_for
    from airloop.training.trainer import fit, predict, target_scale

    rng = np.random.default_rng(0)
    n = 3000
    x = rng.uniform(0, 24, n)
    df = pd.DataFrame({"x": x, "y": 300 + 200 * np.sin(x / 24 * 2 * np.pi) ** 2 + rng.normal(0, 10, n)})
    features = FeaturesConfig(columns=[{"name": "x"}])
    train, val, hold = df.iloc[:2000], df.iloc[2000:2500], df.iloc[2500:]
    req = TrainRequest(model="m", data_root="", partitions=(), run_key="", tracking_uri="", max_epochs=40, seed=3)
    r = fit(req, "regression", train, val, "y", features)
    assert r.target_scale == pytest.approx(target_scale(train["y"], "regression"))
    pred = predict(r.net, r.pre, hold, "regression")
    assert 250 < pred.mean() < 450  # in the target's units, not standardised ones
    linear = fit(
        TrainRequest(model="m", data_root="", partitions=(), run_key="", tracking_uri="", max_epochs=0),
        "regression",
        train,
        val,
        "y",
        features,
    )
    ours = metrics_for("regression", hold["y"], pred)["rmse"]
    start = metrics_for("regression", hold["y"], predict(linear.net, linear.pre, hold, "regression"))["rmse"]
    assert ours < 0.8 * start, (ours, start)
