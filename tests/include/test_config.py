from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from airloop.config import (
    EXPECTATIONS_DIR,
    PIPELINES_DIR,
    get_pipeline,
    higher_is_better,
    load_all_pipelines,
    load_pipeline_config,
    load_pipelines,
)
from airloop.errors import ConfigError

pytestmark = pytest.mark.unit


def _write(tmp_path: Path, mutate, name: str = "flight_delays") -> Path:
    raw = yaml.safe_load((PIPELINES_DIR / "flight_delays.yaml").read_text())
    mutate(raw)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_shipped_config_loads_with_types():
    cfg = load_pipeline_config(PIPELINES_DIR / "flight_delays.yaml")
    assert cfg.name == "flight_delays"
    assert cfg.task.type == "binary_classification"
    assert cfg.task.label.positive_above == 15
    assert cfg.data_schema.columns["time_hour"] == "timestamp"
    assert cfg.dag_id("ingest") == "flight_delays__ingest"
    assert cfg.asset_name("validated") == "flight_delays.validated"
    assert cfg.suite_path.is_file()
    # leakage columns are label sources only
    assert not set(cfg.request_columns) & set(cfg.data_schema.leakage_columns)
    assert cfg.event_time == "time_hour" and cfg.model_server_conn_id == "airloop_model_server_flight_delays"
    with pytest.raises(ValidationError, match="frozen"):
        cfg.name = "other"  # type: ignore[misc]


def test_every_shipped_config_loads():
    assert [c.name for c in load_all_pipelines()] == sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml"))


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda r: r["task"].update(type="classification"), "task.type", "binary_classification"),
        (lambda r: r.pop("source"), "source", "Field required"),
        (lambda r: r["schedule"].update(start_date="yesterday"), "schedule.start_date", "date"),
        (lambda r: r.update(colour="blue"), "colour", "Extra inputs"),
        (lambda r: r["schema"]["columns"].update(distance="integer"), "schema.columns.distance", "'int'"),
        (lambda r: r["features"]["columns"].append({"name": "arr_delay"}), "<top level>", "leak the outcome"),
        (
            lambda r: r["features"]["columns"].append({"name": "nosuch"}),
            "<top level>",
            "not in schema.columns: ['nosuch']",
        ),
        (
            lambda r: r["features"]["columns"].append({"name": "x", "transform": "cyclical"}),
            "features.columns.17",
            "needs ['period']",
        ),
        (lambda r: r["features"].update(piecewise=["carrier"]), "features", "not numeric features"),
        (lambda r: r["gate"].update(metric="rmse"), "<top level>", "does not fit task.type binary_classification"),
        (lambda r: r["task"].update(type="regression"), "task", "positive_above is only for binary"),
        (lambda r: r["deployment"].update(outcome_key=["year", "nosuch"]), "<top level>", "outcome_key names columns"),
        (lambda r: r["deployment"].update(outcome_partition="ds={tailnum}"), "<top level>", "must be outcome_key"),
        (
            lambda r: r["drift"]["column_thresholds"].update(nosuch=1.0),
            "<top level>",
            "column_thresholds names ['nosuch']",
        ),
        (lambda r: r["schema"].update(event_time="year"), "schema", "must be one of timestamp_columns"),
        (lambda r: r["validation"].update(suite="nope.json"), "<top level>", "nope.json"),
        (lambda r: r["canary"].update(steps=[50, 10, 100]), "canary.steps", "rise strictly"),
        (lambda r: r["task"]["label"].pop("positive_above"), "task", "positive_above is required"),
        (lambda r: r.update(name="Flight-Delays"), "name", "lower_snake_case"),
    ],
)
def test_bad_config_names_the_field(tmp_path, mutate, field, words):
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(path)
    msg = str(err.value)
    assert str(path) in msg
    assert f"field '{field}'" in msg
    assert words in msg


def test_file_name_must_match_model_name(tmp_path):
    path = _write(tmp_path, lambda r: None, name="other_model")
    with pytest.raises(ConfigError, match="field 'name' is 'flight_delays' but the file is named 'other_model'"):
        load_pipeline_config(path)


def test_unreadable_files(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_pipeline_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_pipeline_config(tmp_path / "missing.yaml")


def test_load_all_sees_new_files(tmp_path):
    shutil.copy(PIPELINES_DIR / "flight_delays.yaml", tmp_path / "flight_delays.yaml")
    assert [c.name for c in load_all_pipelines(tmp_path)] == ["flight_delays"]
    (tmp_path / "flight_delays.yaml").write_text("name: [broken")
    assert load_all_pipelines(tmp_path) == ()
    configs, errors = load_pipelines(tmp_path)
    assert configs == () and "flight_delays.yaml: not valid YAML" in errors[str(tmp_path / "flight_delays.yaml")]
    with pytest.raises(ConfigError, match="not valid YAML"):
        get_pipeline("flight_delays", tmp_path)


def test_suite_resolves_next_to_the_yaml_first(tmp_path):
    shutil.copy(PIPELINES_DIR / "flight_delays.yaml", tmp_path / "flight_delays.yaml")
    assert load_pipeline_config(tmp_path / "flight_delays.yaml").suite_path == EXPECTATIONS_DIR / "flight_delays.json"
    shutil.copy(EXPECTATIONS_DIR / "flight_delays.json", tmp_path / "flight_delays.json")
    cfg = load_pipeline_config(tmp_path / "flight_delays.yaml")
    assert cfg.folder == tmp_path and cfg.suite_path == tmp_path / "flight_delays.json"


@pytest.mark.parametrize(
    "metric, higher",
    [("roc_auc", True), ("pr_auc", True), ("log_loss", False), ("rmse", False), ("mae", False), ("r2", True)],
)
def test_gate_metrics_know_their_direction(metric, higher):
    assert higher_is_better(metric) is higher
