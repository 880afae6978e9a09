from __future__ import annotations

import pytest
from airloop_local.settings import SettingsError, apply_settings, load_settings

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def _state():
    from airflow.models import Pool
    from airflow.models.connection import Connection
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    with create_session() as s:
        conns = {c.conn_id: (c.conn_type, c.host, c.extra) for c in s.query(Connection).all()}
        pools = {p.pool: p.slots for p in s.query(Pool).all()}
        variables = {v.key: v.val for v in s.query(Variable).all()}
    return conns, pools, variables


def test_apply_is_idempotent(airflow_db):
    first = apply_settings(REPO / "airflow_settings.yaml")
    state1 = _state()
    apply_settings(REPO / "airflow_settings.yaml")
    assert _state() == state1
    conns, pools, variables = state1
    assert first == {"connections": 1, "pools": 2, "variables": 1}  # spark_default; secrets come from elsewhere
    assert conns["spark_default"][:2] == ("spark", "local[2]")
    assert pools["spark"] == 1 and pools["training"] == 1
    assert variables["airloop_environment"] == "local"


def test_changed_values_are_updated_in_place(airflow_db, tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("airflow:\n  pools:\n    - {pool_name: spark, pool_slot: 3}\n")
    apply_settings(f)
    assert _state()[1]["spark"] == 3
    apply_settings(REPO / "airflow_settings.yaml")
    assert _state()[1]["spark"] == 1


def test_malformed_file_names_the_entry(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("airflow:\n  connections:\n    - conn_id: x\n")
    with pytest.raises(SettingsError, match=r"airflow.connections\[0\] is missing \['conn_type'\]"):
        load_settings(f)


def test_model_server_connections_are_left_to_the_stack():
    """Each model's server address follows the stack's port and the set of models, so the stack sets it
    as an environment connection; a row from this file would only be shadowed by it."""
    from airloop.config import load_all_pipelines

    conn_ids = {c["conn_id"] for c in load_settings(REPO / "airflow_settings.yaml")["connections"]}
    served = {cfg.model_server_conn_id for cfg in load_all_pipelines()}
    assert served and not conn_ids & served
