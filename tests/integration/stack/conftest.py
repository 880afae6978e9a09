"""The end-to-end tests against the real local stack share one stack, started for this folder only."""

from __future__ import annotations

import pytest

from tests.conftest import stack


@pytest.fixture(scope="package")
def running_stack(airflow_db):
    """The real local stack (API server + UI, scheduler, DAG processor, triggerer, MLflow, model server) on
    the session's metadata database and a test port: started once for the tests of this folder, stopped
    after them (a live scheduler must not pick up the runs other modules execute with ``dag.test()``)."""
    from airloop_local.cli.common import api

    s = airflow_db
    try:
        stack.start(s, wait_s=180)
        yield s, api(s)
    finally:
        stack.stop(s)


def delete_runs(dag_id: str, run_id_prefix: str) -> None:
    """Delete the runs of ``dag_id`` whose run id starts with ``run_id_prefix`` from the metadata database:
    Airflow keeps one run per day of an ingest DAG, so a run a test leaves would answer another test's
    delivery of that day."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id.like(f"{run_id_prefix}%")).delete(
            synchronize_session=False
        )
