"""``airloop model init`` and ``airloop model check`` on small samples written here."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from airloop_local import cli

from airloop.config import load_pipeline_config
from airloop.features import compute_features, feature_columns
from airloop.ingest import read_batch
from airloop.validation import validate_frame

pytestmark = pytest.mark.unit


def rides(n: int = 240, seed: int = 3) -> pd.DataFrame:
    """Hourly rentals: ``count`` is the target; ``casual + registered`` add up to it, ``count_scaled`` names it."""
    rng = np.random.default_rng(seed)
    started = pd.date_range("2024-03-01", periods=n, freq="37min")
    temp = rng.normal(15, 5, n).round(1)
    casual = rng.poisson(20 + np.clip(temp, 0, None), n)
    registered = rng.poisson(50 + 2 * started.hour, n)
    return pd.DataFrame(
        {
            "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "station": rng.choice(["north", "south", "east"], n),
            "temp": temp,
            "humidity": np.where(rng.random(n) < 0.08, np.nan, rng.uniform(20, 90, n).round()),
            "member": rng.choice([True, False], n),
            "casual": casual,
            "registered": registered,
            "count_scaled": (casual + registered) * 2.5,
            "count": casual + registered,
        }
    )


def payments(n: int = 200, seed: int = 5) -> pd.DataFrame:
    """Payments: ``fraud`` (0/1) is the target; ``chargeback`` is non-zero only for fraud."""
    rng = np.random.default_rng(seed)
    score = rng.uniform(0, 1, n)
    fraud = (score + rng.normal(0, 0.3, n) > 0.8).astype(int)
    amount = rng.gamma(2, 30, n).round(2)
    return pd.DataFrame(
        {
            "created_at": pd.date_range("2024-03-01", periods=n, freq="h", tz="UTC"),
            "amount": amount,
            "country": rng.choice(["DE", "FR", "US"], n),
            "score": score,
            "chargeback": fraud * amount,
            "fraud": fraud,
        }
    )


def init(tmp_path, *args: str) -> int:
    return cli.main(["--state-dir", str(tmp_path / "state"), "model", "init", *args])


def passes_its_suite(cfg, sample) -> pd.DataFrame:
    """The sample, read as ingestion reads a batch of the model, passes the model's whole gate."""
    batch = read_batch(sample.read_bytes(), cfg)
    outcome = validate_frame(cfg, batch)
    assert outcome.success, [f.describe() for f in outcome.failures]
    return batch


def test_init_regression_writes_a_config_that_loads_and_a_suite_the_sample_passes(tmp_path, capsys):
    sample = tmp_path / "rides.csv"
    df = rides()
    df.to_csv(sample, index=False)
    folder = tmp_path / "pipelines"
    assert init(tmp_path, "rides", "--sample", str(sample), "--target", "count", "--pipelines-dir", str(folder)) == 0
    out = capsys.readouterr().out

    cfg = load_pipeline_config(folder / "rides.yaml")
    assert cfg.task.type == "regression" and cfg.task.target == "count"
    assert cfg.task.label.source_column == "count" and cfg.task.label.positive_above is None
    assert cfg.source.kind == "files" and cfg.source.format == "csv"
    assert cfg.data_schema.columns == {
        "started_at": "timestamp",
        "station": "string",
        "temp": "float",
        "humidity": "float",
        "member": "bool",
        "casual": "int",
        "registered": "int",
        "count_scaled": "float",
        "count": "int",
    }
    assert cfg.event_time == "started_at" and cfg.data_schema.timestamp_columns == ("started_at",)
    # the target is the label source; the name match and the two parts that add up to it are flagged
    assert set(cfg.data_schema.leakage_columns) == {"count", "count_scaled", "casual", "registered"}
    assert "flagged: confirm or move back to features" in out
    assert "casual: casual + registered equals count" in out and "count_scaled: its name contains" in out
    specs = {f.name: f for f in cfg.features.columns}
    assert set(specs) == {"started_at_dayofweek", "started_at_hour", "station", "temp", "humidity", "member"}
    assert specs["station"].transform == "categorical" and specs["member"].transform == "categorical"
    assert (specs["started_at_hour"].transform, specs["started_at_hour"].part) == ("date_part", "hour")
    assert cfg.gate.metric == "rmse" and 2 * df["count"].std() <= cfg.gate.min_metric <= 3 * df["count"].std()
    assert "airloop model check rides --sample" in out and "land batches" in out and "rides__ingest" in out

    suite = json.loads(cfg.suite_path.read_text())
    assert cfg.suite_path == folder / "rides.json"
    by = {(e["type"], e["kwargs"]["column"]): e["kwargs"] for e in suite["expectations"]}
    humidity_present = df["humidity"].notna().mean()
    assert by[("expect_column_values_to_not_be_null", "humidity")]["mostly"] < humidity_present
    assert "mostly" not in by[("expect_column_values_to_not_be_null", "temp")]
    assert by[("expect_column_values_to_be_in_set", "station")]["value_set"] == ["east", "north", "south"]
    temp = by[("expect_column_values_to_be_between", "temp")]
    assert temp["min_value"] < df["temp"].min() and temp["max_value"] > df["temp"].max()
    batch = passes_its_suite(cfg, sample)
    features = compute_features(batch, cfg.features, search_dirs=cfg.feature_search_dirs)
    assert list(features.columns) == feature_columns(cfg.features) and len(features) == len(df)


def test_init_binary_from_jsonl(tmp_path, capsys):
    sample = tmp_path / "payments.jsonl"
    payments().to_json(sample, orient="records", lines=True)  # timestamps as epoch milliseconds
    folder = tmp_path / "pipelines"
    assert init(tmp_path, "payments", "--sample", str(sample), "--target", "fraud", "--pipelines-dir", str(folder)) == 0
    out = capsys.readouterr().out
    cfg = load_pipeline_config(folder / "payments.yaml")
    assert cfg.task.type == "binary_classification" and cfg.task.label.positive_above == 0.5
    assert cfg.gate.metric == "roc_auc" and cfg.gate.min_metric == 0.55
    assert cfg.source.format == "jsonl" and cfg.event_time == "created_at"
    assert set(cfg.data_schema.leakage_columns) == {"fraud", "chargeback"}
    assert "chargeback: |rank r|" in out
    assert {"amount", "score", "country"} <= set(feature_columns(cfg.features))
    passes_its_suite(cfg, sample)


def test_init_binary_with_a_threshold_names_the_label(tmp_path, monkeypatch):
    sample = tmp_path / "rides.parquet"
    rides().to_parquet(sample)
    monkeypatch.setenv("AIRLOOP_PIPELINES_DIR", str(tmp_path / "from_env"))
    assert init(tmp_path, "busy", "--sample", str(sample), "--target", "count", "--positive-above", "100") == 0
    cfg = load_pipeline_config(tmp_path / "from_env" / "busy.yaml")
    assert cfg.task.type == "binary_classification" and cfg.task.target == "count_above_100"
    assert cfg.task.label.positive_above == 100 and cfg.source.format == "parquet"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "nope"], "--target 'nope' is not a column of the sample"),
        (["--target", "station"], "--target 'station' is string"),
        (["--target", "temp", "--task", "binary_classification"], "binary_classification needs --positive-above X"),
        (["--target", "temp", "--task", "regression", "--positive-above", "3"], "--positive-above is only for"),
        (["--target", "count", "--positive-above", "10000"], "is the same for every row of the sample"),
    ],
)
def test_init_usage_errors(tmp_path, capsys, args, message):
    sample = tmp_path / "rides.csv"
    rides().to_csv(sample, index=False)
    assert init(tmp_path, "rides", "--sample", str(sample), "--pipelines-dir", str(tmp_path / "p"), *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p" / "rides.yaml").exists()


def test_init_refuses_to_overwrite_without_force_and_bad_names_or_files(tmp_path, capsys):
    sample = tmp_path / "rides.csv"
    rides().to_csv(sample, index=False)
    common = ["--sample", str(sample), "--target", "count", "--pipelines-dir", str(tmp_path / "p")]
    assert init(tmp_path, "rides", *common) == 0
    assert init(tmp_path, "rides", *common) == 2
    assert "already exist(s); pass --force to overwrite" in capsys.readouterr().err
    assert init(tmp_path, "rides", *common, "--force") == 0
    assert init(tmp_path, "Rides-2", *common) == 2
    assert "must be lower_snake_case" in capsys.readouterr().err
    (tmp_path / "rides.xlsx").write_text("x")
    assert init(tmp_path, "other", "--sample", str(tmp_path / "rides.xlsx"), "--target", "count") == 2
    assert "cannot tell the sample's format" in capsys.readouterr().err
    assert init(tmp_path, "other", "--sample", str(tmp_path / "missing.csv"), "--target", "count") == 2
    assert "sample" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a missing required option is argparse's usage error
        init(tmp_path, "other", "--sample", str(sample))
    assert e.value.code == 2


def check(tmp_path, *args: str) -> int:
    return cli.main(
        ["--state-dir", str(tmp_path / "state"), "model", "check", *args, "--pipelines-dir", str(tmp_path / "p")]
    )


def test_check_ok_and_failing(tmp_path, capsys):
    sample = tmp_path / "rides.csv"
    rides().to_csv(sample, index=False)
    assert (
        init(tmp_path, "rides", "--sample", str(sample), "--target", "count", "--pipelines-dir", str(tmp_path / "p"))
        == 0
    )
    capsys.readouterr()

    assert check(tmp_path, "rides") == 0
    assert "rides: config OK" in capsys.readouterr().out
    assert check(tmp_path, "rides", "--sample", str(sample)) == 0
    out = capsys.readouterr().out
    assert "passes the suite" in out and f"features: {len(rides())} rows x 6 features" in out

    bad = rides()
    bad.loc[:9, "temp"] = 500.0  # far outside the sample's range
    bad.loc[:4, "station"] = "west"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert check(tmp_path, "rides", "--sample", str(tmp_path / "bad.csv")) == 1
    out = capsys.readouterr().out
    assert "FAILED column_values_to_be_between on 'temp'" in out
    assert "FAILED column_values_to_be_in_set on 'station'" in out

    yaml_file = tmp_path / "p" / "rides.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("metric: rmse", "metric: roc_auc"))
    assert check(tmp_path, "rides") == 1
    assert "gate.metric 'roc_auc' does not fit task.type regression" in capsys.readouterr().err

    assert check(tmp_path, "nothing_here") == 2  # an unknown model is a usage error
    assert "no pipeline config named 'nothing_here'" in capsys.readouterr().err


def test_the_partner_of_a_correlated_part_of_the_target_is_flagged_too(tmp_path, capsys):
    """``registered`` is flagged by its correlation with the target; ``casual`` alone is not, but the two
    add up to the target, so it leaks as well (the check runs over flagged columns too)."""
    df = rides()
    df["registered"] = df["registered"] * 20  # now almost all of the count: |r| > 0.95
    df["count"] = df["casual"] + df["registered"]
    df = df.drop(columns=["count_scaled"])
    sample = tmp_path / "rides.csv"
    df.to_csv(sample, index=False)
    folder = tmp_path / "pipelines"
    assert init(tmp_path, "rides", "--sample", str(sample), "--target", "count", "--pipelines-dir", str(folder)) == 0
    out = capsys.readouterr().out
    assert "registered: |r|" in out and "casual: casual + registered equals count" in out
    assert set(load_pipeline_config(folder / "rides.yaml").data_schema.leakage_columns) == {
        "count",
        "casual",
        "registered",
    }


@pytest.mark.heavy
def test_traffic_sends_each_row_with_its_key_and_event_time(tmp_path, capsys):
    import datetime as dt

    from airloop.serving.server import ModelService, Variant, create_app
    from airloop.sources import nycflights13
    from tests.conftest import serve_in_thread

    class Half:
        def predict(self, df):
            return pd.DataFrame({"prediction": [0.5] * len(df)})

    seen = []
    service = ModelService("flight_delays", Variant("champion", "1", Half()), None, 0.0, None)
    invoke = service.invoke

    def recording(body, content_type, request_key=None, event_time=None):
        seen.append((request_key, event_time))
        return invoke(body, content_type, request_key, event_time)

    service.invoke = recording
    rows = nycflights13.day_frame(dt.date(2013, 1, 5)).head(7)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    with serve_in_thread(create_app(service)) as url:
        rc = cli.main(
            [
                "--state-dir",
                str(tmp_path / "state"),
                "traffic",
                "flight_delays",
                str(tmp_path / "rows.csv"),
                "--url",
                url,
            ]
        )
    assert rc == 0 and "7 rows" in capsys.readouterr().out
    assert len(seen) == 7 and all(k and k.startswith("2013-1-5-") and t.startswith("2013-01-05T") for k, t in seen)
    rows.drop(columns=["dest"]).to_csv(tmp_path / "short.csv", index=False)
    assert (
        cli.main(
            [
                "--state-dir",
                str(tmp_path / "state"),
                "traffic",
                "flight_delays",
                str(tmp_path / "short.csv"),
                "--url",
                url,
            ]
        )
        == 1
    )
    assert "lacks the request columns ['dest']" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--start", "April"], "Invalid isoformat"),
        (["--start", "2011-04-03", "--days", "0"], "--days must be at least 1"),
        (["--start", "2011-04-03", "--conf", "[1]"], "a JSON object"),
    ],
)
def test_run_refuses_bad_arguments_before_touching_the_stack(tmp_path, capsys, args, message):
    assert cli.main(["--state-dir", str(tmp_path / "state"), "run", "m__drift", *args]) == 2
    assert message in capsys.readouterr().err
