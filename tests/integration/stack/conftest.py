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
