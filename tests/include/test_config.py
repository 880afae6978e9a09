from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from airloop.config import PIPELINES_DIR, load_all_pipelines, load_pipeline_config
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
    assert not set(cfg.features) & set(cfg.data_schema.leakage_columns)
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
        (lambda r: r["features"].append("arr_delay"), "<top level>", "leak the outcome"),
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
    with pytest.raises(ConfigError):
        load_all_pipelines(tmp_path)
