"""Apply ``airflow_settings.yaml`` (connections, pools, variables) idempotently, as the Astro CLI does.

Run it in a process whose ``AIRFLOW_HOME`` points at the target Airflow (``airloop settings apply`` does):
existing objects are updated in place, missing ones created, nothing else touched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

_CONN_FIELDS = {
    "conn_type": "conn_type",
    "conn_host": "host",
    "conn_schema": "schema",
    "conn_login": "login",
    "conn_password": "password",
    "conn_port": "port",
    "conn_description": "description",
}


class SettingsError(ValueError):
    """airflow_settings.yaml is malformed; the message names the entry and field."""


def load_settings(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Read and check the file; return ``{"connections": [...], "pools": [...], "variables": [...]}``."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    section = doc.get("airflow", {}) if isinstance(doc, dict) else None
    if not isinstance(section, dict):
        raise SettingsError(f"{path}: expected a top-level 'airflow:' mapping")
    out: dict[str, list[dict[str, Any]]] = {}
    required = {
        "connections": ("conn_id", "conn_type"),
        "pools": ("pool_name", "pool_slot"),
        "variables": ("variable_name",),
    }
    for kind, keys in required.items():
        items = section.get(kind) or []
        if not isinstance(items, list):
            raise SettingsError(f"{path}: 'airflow.{kind}' must be a list")
        for i, item in enumerate(items):
            missing = [k for k in keys if not isinstance(item, dict) or item.get(k) in (None, "")]
            if missing:
                raise SettingsError(f"{path}: airflow.{kind}[{i}] is missing {missing}")
        out[kind] = items
    return out


def apply_settings(path: str | Path) -> dict[str, int]:
    """Upsert every connection, pool and variable of the file into the configured metadata database."""
    # The ORM models on purpose (as `airflow connections add` does): this writes the metadata database from
    # outside any task, where the task-SDK Connection/Variable cannot.
    from airflow.models import Pool
    from airflow.models.connection import Connection
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    settings = load_settings(path)
    with create_session() as session:
        for c in settings["connections"]:
            conn = session.query(Connection).filter(Connection.conn_id == c["conn_id"]).one_or_none()
            if conn is None:
                conn = Connection(conn_id=c["conn_id"])
                session.add(conn)
            for key, attr in _CONN_FIELDS.items():
                setattr(conn, attr, c.get(key))
            extra = c.get("conn_extra")
            conn.set_extra(json.dumps(extra) if isinstance(extra, dict) else extra)
        for p in settings["pools"]:
            Pool.create_or_update_pool(
                p["pool_name"],
                int(p["pool_slot"]),
                p.get("pool_description", ""),
                include_deferred=False,
                session=session,
            )
        for v in settings["variables"]:
            Variable.set(
                v["variable_name"],
                str(v.get("variable_value", "")),
                description=v.get("variable_description"),
                session=session,
            )
    return {k: len(v) for k, v in settings.items()}


if __name__ == "__main__":  # python -m airloop_local.settings airflow_settings.yaml
    counts = apply_settings(sys.argv[1])
    print(json.dumps(counts))
