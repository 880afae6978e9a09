"""The ingest DAG through Airflow (``dag.test()``) on the configured metadata database.

Consecutive real days publish on ``flight_delays.validated`` with URIs, hashes and counts in the event;
each kind of corrupted batch ends in quarantine with a report, a failed run and no Asset event.
"""

from __future__ import annotations

import datetime as dt

import pytest

from airloop.sources import nycflights13
from airloop.storage import MANIFEST, DataRoot, default_data_root_uri

pytestmark = pytest.mark.integration

REAL_DAYS = [dt.date(2013, 3, d) for d in (4, 5, 6)]
CORRUPT = {
    dt.date(2013, 4, 1): "null_column",
    dt.date(2013, 4, 2): "missing_column",
    dt.date(2013, 4, 3): "out_of_range",
    dt.date(2013, 4, 4): "wrong_types",
    dt.date(2013, 4, 5): "empty_file",
    dt.date(2013, 4, 6): "not_csv",
}


@pytest.fixture(scope="module")
def ingest_dag(airflow_db):
    from airloop_airflow.dag_factory import build_pipeline_dags

    return build_pipeline_dags()["flight_delays__ingest"]


@pytest.fixture(scope="module")
def root(cfg) -> DataRoot:
    root = DataRoot(default_data_root_uri())
    nycflights13.replay_days(
        root, cfg.name, [*REAL_DAYS, *CORRUPT], file_name=cfg.source.file_name, corruptions=CORRUPT
    )
    return root


def _run(dag, day: dt.date):
    """Run the DAG for the data interval [day, day + 1).

    A manual run's data interval is the one that ends at its logical date (Airflow's rule for
    data-interval timetables), so the logical date is the day after.
    """
    end = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
    return dag.test(logical_date=end)


def _events_for(run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as s:
        rows = (
            s.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "flight_delays.validated", AssetEvent.source_run_id == run_id)
            .all()
        )
        return [dict(r.extra) for r in rows]


def _task_states(dag_run) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as s:
        tis = s.query(TaskInstance).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).all()
        return {ti.task_id: (str(ti.state), ti.try_number) for ti in tis}


def test_consecutive_real_days_ingest_and_publish(ingest_dag, root, cfg):
    for day in REAL_DAYS:
        dr = _run(ingest_dag, day)
        assert str(dr.state) == "success", _task_states(dr)
        part = f"ds={day.isoformat()}"
        raw = root.partition_uri("raw", cfg.name, part)
        manifest = root.read_json(f"{raw}/{MANIFEST}")
        assert manifest["rows"] == len(nycflights13.day_frame(day))
        [extra] = _events_for(dr.run_id)
        assert extra["uri"] == raw and extra["partition"] == part
        assert extra["content_hash"] == manifest["content_hash"] and extra["rows"] == manifest["rows"]
        assert extra["data_interval"]["start"].startswith(day.isoformat())
        assert extra["validation"]["failed"] == 0
        assert "data" not in extra  # metadata only
    # the listing shows them (other tests of the session add other days to the same data root)
    listed = [p.rsplit("=", 1)[1] for p in root.list_partitions("raw", cfg.name)]
    assert [d for d in listed if d.startswith("2013-03-0")] == [d.isoformat() for d in REAL_DAYS]


def test_rerunning_an_interval_replaces_its_partition(ingest_dag, root, cfg):
    day = REAL_DAYS[0]
    raw = root.partition_uri("raw", cfg.name, f"ds={day.isoformat()}")
    before = root.read_json(f"{raw}/{MANIFEST}")
    dr = _run(ingest_dag, day)
    assert str(dr.state) == "success"
    after = root.read_json(f"{raw}/{MANIFEST}")
    assert after["rows"] == before["rows"] and after["content_hash"] == before["content_hash"]


@pytest.mark.parametrize("day", list(CORRUPT), ids=lambda d: CORRUPT[d])
def test_corrupted_batches_end_in_quarantine(ingest_dag, root, cfg, day):
    dr = _run(ingest_dag, day)
    states = _task_states(dr)
    assert str(dr.state) == "failed", states
    part = f"ds={day.isoformat()}"
    q = root.partition_uri("quarantine", cfg.name, part)
    assert root.exists(f"{q}/report.html") and root.exists(f"{q}/validation.json")
    assert root.read_json(f"{q}/{MANIFEST}")["quarantine"]["failures"]
    assert not root.exists(root.partition_uri("raw", cfg.name, part))
    assert _events_for(dr.run_id) == []
    failed_task = "ingest_batch" if CORRUPT[day] in ("empty_file", "not_csv") else "validate_batch"
    assert states[failed_task][0] == "failed"
    assert states[failed_task][1] == 1, "a data problem must not be retried"
