"""Test session setup: one Airflow home, one data root and one metadata database per session.

The environment is set here, before anything imports Airflow. The metadata database is
``AIRLOOP_DATABASE_URL`` when set (CI: a fresh PostgreSQL database per run), else SQLite in the
session's temporary folder. Integration tests ask for ``airflow_db``, which migrates it once.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="airloop-tests-"))

os.environ["AIRLOOP_HOME"] = str(_SESSION_DIR / "state")
os.environ["AIRLOOP_DATA_ROOT"] = str(_SESSION_DIR / "state" / "data")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"

from airloop_local import stack  # noqa: E402  (no Airflow import inside)

import airloop  # noqa: E402

# Each checkout has its own .venv (scripts/bootstrap.sh); make sure this one runs this checkout's code.
if not Path(airloop.__file__).resolve().is_relative_to(REPO):
    raise RuntimeError(
        f"the environment imports airloop from {Path(airloop.__file__).parent}, not from {REPO}: "
        "run `make venv` in this checkout and run the tests with its .venv/bin/python"
    )

TEST_PORT = int(os.environ.get("AIRLOOP_TEST_PORT", "18480"))
SETTINGS = stack.StackSettings(
    state_dir=os.environ["AIRLOOP_HOME"],
    port=TEST_PORT,
    database_url=os.environ.get("AIRLOOP_DATABASE_URL", ""),
    mlflow_database_url=os.environ.get("AIRLOOP_MLFLOW_DATABASE_URL", ""),
)
# Tasks run in this process (dag.test) talk to the MLflow store directly; the stack's server uses it too.
(_SESSION_DIR / "state" / "mlflow").mkdir(parents=True, exist_ok=True)
os.environ["MLFLOW_TRACKING_URI"] = SETTINGS.mlflow_db_url
stack.write_airflow_cfg(SETTINGS)
for _k in [k for k in os.environ if k.startswith("AIRFLOW__")]:
    del os.environ[_k]
os.environ["AIRFLOW_HOME"] = str(SETTINGS.airflow_home)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"airloop: AIRFLOW_HOME={SETTINGS.airflow_home}",
        f"airloop: metadata db={stack._safe_url(SETTINGS.db_url)}",
        f"airloop: mlflow store={stack._safe_url(SETTINGS.mlflow_db_url)}",
    ]


# Session fixtures that run a Spark job, train a model or start the stack: only for tests marked heavy or
# integration, so that `make test-fast` (unit tests not marked heavy) runs none of them.
HEAVY_FIXTURES = frozenset({"spark", "feature_root", "champion", "running_stack"})
_running: list[pytest.Item] = []


def _may_be_heavy(item: pytest.Item) -> bool:
    return bool({"heavy", "integration"} & {m.name for m in item.iter_markers()})


def _heavy_fixtures(item: pytest.Item) -> set[str]:
    """The heavy fixtures a test uses, directly or through other fixtures (a parameter of the same name is not one)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return (HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))) - set(params)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test must say what it is (unit or integration), and only heavy or integration tests use heavy fixtures."""
    unmarked = [i.nodeid for i in items if not ({"unit", "integration"} & {m.name for m in i.iter_markers()})]
    if unmarked:
        raise pytest.UsageError(f"tests without a unit/integration marker: {unmarked[:10]}")
    light = [f"{i.nodeid} uses {sorted(h)}" for i in items if (h := _heavy_fixtures(i)) and not _may_be_heavy(i)]
    if light:
        raise pytest.UsageError(f"tests using a heavy fixture must be marked heavy (or integration): {light[:10]}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _running[:] = [item]


def require_heavy(what: str) -> None:
    """Fail the running test unless it is marked heavy or integration: ``what`` starts a server, Spark or training."""
    if _running and not _may_be_heavy(_running[0]):
        pytest.fail(f"{_running[0].nodeid} runs {what}: mark it heavy (`@pytest.mark.heavy`)", pytrace=False)


@pytest.fixture(scope="session")
def stack_settings() -> stack.StackSettings:
    return SETTINGS


@pytest.fixture(scope="session")
def airflow_db() -> stack.StackSettings:
    """The session's metadata database, migrated, with airflow_settings.yaml applied."""
    stack.init(SETTINGS)
    return SETTINGS


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for the whole test session."""
    require_heavy("Spark")
    from airloop.spark.build_features import build_session

    session = build_session("airloop-tests")
    yield session
    session.stop()
    # py4j logs "Closing down clientserver connection" from __del__ after pytest closed its streams
    import logging

    logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture()
def data_root(tmp_path: Path):
    from airloop.storage import DataRoot

    return DataRoot(tmp_path / "data")


@pytest.fixture(scope="session")
def cfg():
    from airloop.config import get_pipeline

    return get_pipeline("flight_delays")


def run_python(code: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run a snippet in a fresh interpreter (clean ``sys.modules``), with the session's environment."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


FEATURE_DAYS = 21  # three weeks of January 2013


@pytest.fixture(scope="session")
def feature_root(spark, cfg):
    """Three weeks of real days ingested and turned into features (shared by training and gate tests)."""
    import datetime as dt

    from airloop.ingest import Interval, ingest_batch
    from airloop.sources import nycflights13
    from airloop.spark.build_features import run
    from airloop.storage import DataRoot

    root = DataRoot(_SESSION_DIR / "features-root")
    days = [dt.date(2013, 1, 1) + dt.timedelta(days=i) for i in range(FEATURE_DAYS)]
    nycflights13.replay_days(root, cfg.name, days, file_name=cfg.source.file_name)
    parts = tuple(f"ds={d}" for d in days)
    for p in parts:
        ingest_batch(cfg, root, partition=p, interval=Interval(None, None), run_id="fixture")
    run(cfg.name, root.uri, list(parts), spark=spark)
    return root, parts


@pytest.fixture(scope="session")
def champion(feature_root, tmp_path_factory):
    """A real trained model, registered and made champion in a throwaway MLflow store."""
    from mlflow import MlflowClient

    from airloop.datasets import load_partitions
    from airloop.training.request import TrainRequest
    from airloop.training.train import train

    root, parts = feature_root
    uri = f"sqlite:///{tmp_path_factory.mktemp('serving-mlflow') / 'mlflow.db'}"
    res = train(
        TrainRequest(model="flight_delays", data_root=root.uri, partitions=parts, run_key="serve/1", tracking_uri=uri)
    )
    MlflowClient(uri).set_registered_model_alias("flight_delays", "champion", res["version"])
    rows = load_partitions(root, "raw", "flight_delays", (parts[-1],)).head(40).reset_index(drop=True)
    return uri, rows


@pytest.fixture()
def use_tracking_uri(monkeypatch):
    """Point every MLflow client of this test (including ``MlflowClient()`` inside operators, and MLflow's
    own internal clients) at one store; the session's store is restored afterwards. Setting only
    ``MLFLOW_TRACKING_URI`` is not enough once any code has called ``mlflow.set_tracking_uri``."""
    import mlflow

    before = mlflow.get_tracking_uri()

    def use(uri: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)

    yield use
    mlflow.set_tracking_uri(before)


def free_port() -> int:
    """A loopback port nothing listens on (right now)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def drive_canary(sensor, ctx, url: str, bodies, looks: int = 600):
    """Replay ``bodies`` to ``url`` while the canary sensor looks, as the scheduler would reschedule it;
    returns the sensor's final XCom value."""
    import threading
    import time

    from airloop.serving import replay

    done = threading.Event()
    t = threading.Thread(target=replay.replay, args=(url, bodies), kwargs={"loop": True, "stop": done.is_set})
    t.start()
    try:
        for _ in range(looks):
            r = sensor.poke(ctx)
            if r.is_done:
                return r.xcom_value
            time.sleep(0.5)
        raise AssertionError("the canary did not end")
    finally:
        done.set()
        t.join()


@contextlib.contextmanager
def serve_in_thread(app):
    """Run an ASGI app with uvicorn in a thread on a free loopback port; yields its base URL."""
    require_heavy("a server")
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join()
