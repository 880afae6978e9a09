"""Every DAG file imports cleanly and cheaply, and every DAG says who owns it and how it behaves.

Like Airflow's ``test_example_dags.py`` runs over every example, these tests run over every pipeline
config: the real ones plus a model the test writes (a renamed copy of a real one, with its suite), all in
a temporary ``AIRLOOP_PIPELINES_DIR``. Parsing happens in a fresh interpreter so the check of imported
modules sees only what parsing loaded, with database connections and connection/variable lookups made to
fail loudly. A broken config must cost only its own model's DAGs, in ``DagBag`` and in the DAG processor.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from airloop.config import load_all_pipelines, pipelines_dir
from tests.conftest import REPO, run_python

VERBS = {
    "ingest",
    "validate",
    "release",
    "build",
    "train",
    "gate",
    "rollback",
    "start",
    "watch",
    "conclude",
    "check",
    "trigger",
}
DAG_VERBS = ("ingest", "release", "features", "train", "deploy", "drift", "rollback")
HEAVY = ["pandas", "pyspark", "torch", "mlflow", "evidently", "great_expectations", "kubernetes", "numpy", "pyarrow"]
FACTORY_FILE = "airloop_pipelines.py"
CONFIG_CHECK_FILE = "airloop_pipeline_configs.py"
# the model the test adds; its start date differs from every real model's, so a date copied into generic
# doc text shows up
EXTRA_MODEL = "integrity_copy"
EXTRA_START = dt.date(2001, 2, 3)
BROKEN_MODEL = "integrity_broken"


def _real_configs() -> list:
    configs = list(load_all_pipelines())
    assert configs, f"no valid pipeline config in {pipelines_dir()}"
    return configs


REAL_MODELS = sorted(p.stem for p in pipelines_dir().glob("*.yaml"))
MODELS = [*REAL_MODELS, EXTRA_MODEL]


def _copy_model(cfg, dest: Path, name: str, **changes: dict) -> Path:
    """Write ``cfg``'s YAML renamed to ``name`` (every mention of the model, webhooks included) with a copy
    of its suite; ``changes`` maps a top-level section to the fields to replace in it."""
    text = (cfg.folder / f"{cfg.name}.yaml").read_text()
    for old, new in ((cfg.name, name), (cfg.name.replace("_", "-"), name.replace("_", "-"))):
        text = text.replace(old, new)
    raw = yaml.safe_load(text)
    if cfg.features.module:  # the function stays where it is
        raw["features"]["module"] = cfg.features.module
    raw["description"] = "A renamed copy of a real model, written by the DAG integrity test."
    raw["validation"]["suite"] = f"{name}.json"
    for section, fields in changes.items():
        raw[section] = {**raw[section], **fields}
    suite = json.loads(cfg.suite_path.read_text())
    suite["name"] = name
    (dest / f"{name}.json").write_text(json.dumps(suite))
    path = dest / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _pipelines_folder(dest: Path) -> Path:
    """Every real config with its suite and any feature module next to it."""
    dest.mkdir()
    for cfg in _real_configs():
        for f in cfg.folder.iterdir():
            if f.suffix in (".yaml", ".py") and f.is_file():
                shutil.copy(f, dest / f.name)
        shutil.copy(cfg.suite_path, dest / cfg.suite_path.name)
    return dest


PARSE = r"""
import json, sys
import sqlalchemy.event
from sqlalchemy.engine import Engine
queries = []
sqlalchemy.event.listen(Engine, "before_cursor_execute", lambda *a, **k: queries.append(a[2][:80]))
from airflow.sdk import Connection, Variable
def _forbidden(*a, **k):
    raise RuntimeError("connection or variable lookup while parsing a DAG file")
Connection.get = classmethod(_forbidden)
Variable.get = staticmethod(_forbidden)
before = set(sys.modules)
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="dags", safe_mode=False)
loaded = sorted({m.split(".")[0] for m in set(sys.modules) - before})
dags = {}
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {
        "fileloc": dag.fileloc,
        "tags": sorted(dag.tags),
        "doc_md": dag.doc_md or "",
        "schedule": type(dag.timetable).__name__,
        "start_date": dag.start_date.isoformat() if dag.start_date else None,
        "catchup": dag.catchup,
        "params": {k: str(v.description or "") for k, v in dag.params.items()},
        "tasks": {t.task_id: {"owner": t.owner, "retries": t.retries, "explicit": "retries" in (dag.default_args or {}),
                              "doc": bool(t.doc_md)} for t in dag.tasks},
    }
print("RESULT" + json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "loaded": loaded,
                             "queries": queries, "dags": dags}))
"""


def _parse(folder: Path) -> dict:
    proc = run_python(PARSE, env={"AIRLOOP_PIPELINES_DIR": str(folder)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line.removeprefix("RESULT"))


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> Path:
    """The real configs plus a third model, a renamed copy of the first with its own start date."""
    folder = _pipelines_folder(tmp_path_factory.mktemp("integrity") / "pipelines")
    _copy_model(_real_configs()[0], folder, EXTRA_MODEL, schedule={"start_date": EXTRA_START, "end_date": None})
    return folder


@pytest.fixture(scope="module")
def parsed(pipelines) -> dict:
    return _parse(pipelines)


@pytest.mark.unit
def test_the_folder_holds_every_model(pipelines):
    assert sorted(p.stem for p in pipelines.glob("*.yaml")) == sorted(MODELS)


@pytest.mark.unit
def test_no_import_errors(parsed):
    assert parsed["errors"] == {}


@pytest.mark.unit
@pytest.mark.parametrize("model", MODELS)
def test_every_model_has_its_dags(parsed, model):
    expected = {f"{model}__{v}" for v in DAG_VERBS}
    assert expected <= set(parsed["dags"]), sorted(expected - set(parsed["dags"]))
    assert {Path(parsed["dags"][d]["fileloc"]).name for d in expected} == {FACTORY_FILE}


@pytest.mark.unit
def test_no_other_dags(parsed):
    assert set(parsed["dags"]) == {f"{m}__{v}" for m in MODELS for v in DAG_VERBS}


@pytest.mark.unit
def test_no_heavy_modules_while_parsing(parsed):
    assert sorted(set(HEAVY) & set(parsed["loaded"])) == []


@pytest.mark.unit
def test_no_database_queries_while_parsing(parsed):
    assert parsed["queries"] == []


@pytest.mark.unit
def test_dag_files_are_thin():
    for f in (REPO / "dags").glob("*.py"):
        text = f.read_text()
        assert not re.search(r"^\s*(import|from)\s+(" + "|".join(HEAVY) + r")\b", text, re.M), f
        assert len(text.splitlines()) < 40, f"{f.name} should stay a thin factory call"


@pytest.mark.unit
def test_every_dag_documents_and_owns_itself(parsed):
    for dag_id, d in parsed["dags"].items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*__[a-z_]+", dag_id), dag_id
        assert d["tags"], dag_id
        assert len(d["doc_md"]) > 200 and d["doc_md"].lstrip().startswith("#"), dag_id
        assert d["start_date"] and dt.datetime.fromisoformat(d["start_date"]) < dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
        assert d["catchup"] is False, dag_id
        for task_id, t in d["tasks"].items():
            assert t["owner"] and t["owner"] != "airflow", (dag_id, task_id)
            assert t["explicit"], f"{dag_id}.{task_id}: retries must be set explicitly"
            assert "_" in task_id and task_id.split("_")[0] in VERBS, task_id


@pytest.mark.unit
@pytest.mark.parametrize("model", MODELS)
def test_retry_policy(parsed, model):
    dags = parsed["dags"]
    assert dags[f"{model}__ingest"]["tasks"]["ingest_batch"]["retries"] >= 2  # a late file or storage hiccup can heal
    assert dags[f"{model}__release"]["tasks"]["release_batch"]["retries"] == 0
    deploy = dags[f"{model}__deploy"]["tasks"]
    assert deploy["conclude_canary"]["retries"] == 0  # a rollback is a verdict, not a transient failure
    assert deploy["watch_canary"]["retries"] >= 1  # a scrape that fails once can heal


@pytest.mark.unit
def test_docs_name_only_their_own_model_and_dates(parsed):
    """The added model's docs come from its own config: no other model's name, no date but its own."""
    own_dates = {str(EXTRA_START), str(EXTRA_START + dt.timedelta(days=1))}
    for verb in DAG_VERBS:
        d = parsed["dags"][f"{EXTRA_MODEL}__{verb}"]
        text = d["doc_md"] + json.dumps(d["params"])
        for other in REAL_MODELS:
            assert other not in text.replace(EXTRA_MODEL, ""), f"{EXTRA_MODEL}__{verb} names {other}"
        assert set(re.findall(r"\d{4}-\d{2}-\d{2}", text)) <= own_dates, f"{EXTRA_MODEL}__{verb}"


@pytest.mark.unit
@pytest.mark.parametrize("model", MODELS)
def test_features_doc_names_the_feature_definition(parsed, pipelines, model):
    from airloop.config import load_pipeline_config

    features = load_pipeline_config(pipelines / f"{model}.yaml").features
    doc = parsed["dags"][f"{model}__features"]["doc_md"]
    expected = [features.module] if features.module else [f"`{c.name}`" for c in features.columns]
    assert [e for e in expected if e not in doc] == []


@pytest.mark.unit
def test_features_doc_names_a_feature_module():
    from airloop.features import FeaturesConfig
    from airloop_airflow.dag_factory import build_features_dag

    features = FeaturesConfig(module="team_pkg.features:make", inputs=("a", "b"), numeric=("x",), categorical=("y",))
    doc = build_features_dag(_real_configs()[0].model_copy(update={"features": features})).doc_md
    assert "`team_pkg.features:make`" in doc and "reads `a`, `b`; returns numeric `x` and categorical `y`" in doc


# A broken config: its model has no DAGs, the others load, and the import error names the YAML and field.


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> tuple[Path, Path]:
    folder = _pipelines_folder(tmp_path_factory.mktemp("broken") / "pipelines")
    path = _copy_model(_real_configs()[0], folder, BROKEN_MODEL, gate={"min_metric": "not-a-number"})
    return folder, path


@pytest.mark.unit
def test_a_broken_config_costs_only_its_own_dags(broken):
    folder, path = broken
    parsed = _parse(folder)
    assert set(parsed["dags"]) == {f"{m}__{v}" for m in REAL_MODELS for v in DAG_VERBS}
    assert [Path(k).name for k in parsed["errors"]] == [CONFIG_CHECK_FILE]
    message = next(iter(parsed["errors"].values()))
    assert str(path) in message and "gate.min_metric" in message and "not-a-number" in message
    assert sorted(set(HEAVY) & set(parsed["loaded"])) == [] and parsed["queries"] == []


@pytest.mark.unit
def test_check_pipeline_configs(pipelines, broken):
    from airloop.errors import ConfigError
    from airloop_airflow.dag_factory import check_pipeline_configs

    check_pipeline_configs(str(pipelines))  # all load: quiet
    with pytest.raises(
        ConfigError, match=rf"(?s)models have no DAGs: {BROKEN_MODEL}\b.*{re.escape(str(broken[1]))}.*gate\.min_metric"
    ):
        check_pipeline_configs(str(broken[0]))


# The DAG processor's own parse-and-store path, on a fresh SQLite metadata database: it records an import
# error against a whole file and marks every DAG of that file stale (scheduler and trigger API skip them),
# which is why the broken config is reported by a file of its own.
PROCESSOR = r"""
import json, os
from pathlib import Path
import structlog
from sqlalchemy import select
from airflow.utils.db import initdb
initdb()
from airflow.dag_processing.bundles.manager import DagBundlesManager
from airflow.dag_processing.manager import DagFileProcessorManager
from airflow.dag_processing.processor import DagFileParseRequest, _parse_file
from airflow.models.dag import DagModel
from airflow.models.errors import ParseImportError
from airflow.utils.session import create_session

DagBundlesManager().sync_bundles_to_db()
for folder in map(Path, os.environ["PARSE_FOLDERS"].split(os.pathsep)):
    for f in sorted(folder.glob("*.py")):
        # what DagFileProcessorProcess runs in its child process, then what the manager stores
        res = _parse_file(DagFileParseRequest(file=str(f), bundle_path=folder, bundle_name="dags-folder"),
                          structlog.get_logger())
        with create_session() as session:
            DagFileProcessorManager.persist_parsing_result(
                None, bundle_name="dags-folder", bundle_version=None, version_data=None, parsing_result=res,
                run_duration=0.1, relative_fileloc=f.name, session=session)
with create_session() as session:
    dags = {d.dag_id: {"stale": d.is_stale, "import_errors": bool(d.has_import_errors), "file": d.relative_fileloc}
            for d in session.scalars(select(DagModel))}
    errors = {e.filename: e.stacktrace for e in session.scalars(select(ParseImportError))}
print("RESULT" + json.dumps({"dags": dags, "errors": errors}))
"""

ONE_FILE_TWO_DAGS = """
import datetime as dt
from airflow.sdk import DAG
class _Invalid(DAG):
    def validate(self):
        raise ValueError("a broken config")
good = DAG(dag_id="one_file__good", schedule=None, start_date=dt.datetime(2020, 1, 1))
bad = _Invalid(dag_id="one_file__bad", schedule=None, start_date=dt.datetime(2020, 1, 1))
"""


@pytest.mark.integration
def test_the_dag_processor_keeps_the_other_models(broken, tmp_path):
    folder, path = broken
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "one_file.py").write_text(ONE_FILE_TWO_DAGS)
    proc = run_python(
        PROCESSOR,
        env={
            "AIRLOOP_PIPELINES_DIR": str(folder),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PARSE_FOLDERS": os.pathsep.join([str(REPO / "dags"), str(alone)]),
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")).removeprefix("RESULT"))
    dags, errors = result["dags"], result["errors"]

    good = {f"{m}__{v}" for m in REAL_MODELS for v in DAG_VERBS}
    assert {d for d in dags if d != "one_file__good"} == good
    assert {d: dags[d] for d in good} == {
        d: {"stale": False, "import_errors": False, "file": FACTORY_FILE} for d in good
    }
    assert set(errors) == {CONFIG_CHECK_FILE, "one_file.py"}
    assert str(path) in errors[CONFIG_CHECK_FILE] and "gate.min_metric" in errors[CONFIG_CHECK_FILE]
    # one file holding both: its valid DAG is stored, then marked stale, with import errors
    assert dags["one_file__good"] == {"stale": True, "import_errors": True, "file": "one_file.py"}
