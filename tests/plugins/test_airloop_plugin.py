from __future__ import annotations

import datetime as dt
import importlib.util

import pytest
from fastapi.testclient import TestClient

from airloop import quarantine
from airloop.errors import BatchValidationError
from airloop.ingest import Interval, ingest_batch
from airloop.sources import nycflights13
from tests.conftest import REPO

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def plugin():
    spec = importlib.util.spec_from_file_location("airloop_plugin", REPO / "plugins" / "airloop_plugin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def client(plugin, data_root, cfg, monkeypatch):
    monkeypatch.setenv("AIRLOOP_DATA_ROOT", data_root.uri)
    day = dt.date(2013, 1, 9)
    nycflights13.replay_days(
        data_root, cfg.name, [day], file_name=cfg.source.file_name, corruptions={day: "null_column"}
    )
    ingest_batch(cfg, data_root, partition="ds=2013-01-09", interval=Interval(None, None), run_id="r1")
    with pytest.raises(BatchValidationError):
        quarantine.validate_partition(cfg, data_root, "ds=2013-01-09")
    from airflow.api_fastapi.core_api.security import get_user

    plugin.app.dependency_overrides[get_user] = lambda: object()
    yield TestClient(plugin.app)
    plugin.app.dependency_overrides.clear()


def test_plugin_registers_app_and_nav_link(plugin):
    p = plugin.AirloopPlugin
    assert p.fastapi_apps[0]["url_prefix"] == "/airloop"
    assert p.external_views[0]["href"] == "/airloop/quarantine"


def test_routes_require_a_logged_in_user(plugin):
    raw = TestClient(plugin.app)
    assert raw.get("/quarantine").status_code == 401
    assert raw.get("/files/quarantine/x/report.html").status_code == 401


def test_quarantine_page_lists_batches_with_report_links(client):
    page = client.get("/quarantine")
    assert page.status_code == 200
    assert "ds=2013-01-09" in page.text and "not_be_null on &#x27;origin&#x27;" in page.text
    assert "files/quarantine/flight_delays/ds=2013-01-09/report.html" in page.text


def test_report_is_served(client):
    r = client.get("/files/quarantine/flight_delays/ds=2013-01-09/report.html")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "FAILED" in r.text


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("raw/flight_delays/ds=2013-01-09/_manifest.json", 403),  # outside the served zones
        ("quarantine/flight_delays/ds=2013-01-09/data.parquet", 403),  # not a report type
        ("quarantine/%2e%2e/%2e%2e/etc/passwd.html", 403),  # escapes the data root
        ("reports/flight_delays/ds=2099-01-01/validation.html", 404),
    ],
)
def test_nothing_else_is_served(client, path, status):
    assert client.get(f"/files/{path}").status_code == status


def test_runbooks_are_rendered_and_listed(client):
    page = client.get("/runbooks/batch_quarantined")
    assert page.status_code == 200 and "<h1>" in page.text and "airloop quarantine release" in page.text
    assert client.get("/runbooks/nothing").status_code == 404
    index = client.get("/runbooks")
    assert index.status_code == 200 and "runbooks/canary_rollback" in index.text


def test_a_tasks_runbook_link_follows_its_alert(plugin, client, data_root):
    from airloop.alerts import append_alert
    from airloop_airflow.links.ui import RunbookLink

    assert any(isinstance(link, RunbookLink) for link in plugin.AirloopPlugin.global_operator_extra_links)
    append_alert(
        data_root,
        {
            "model": "flight_delays",
            "kind": "batch_unreadable",
            "summary": "not csv",
            "dag_id": "flight_delays__ingest",
            "run_id": "r9",
            "task_id": "ingest_batch",
        },
    )
    q = "/runbooks/for-task?dag_id=flight_delays__ingest&run_id={}&task_id={}"
    follow = client.get(q.format("r9", "ingest_batch"), follow_redirects=False)
    assert (follow.status_code, follow.headers["location"]) == (307, "/airloop/runbooks/batch_unreadable")
    # no alert for that try: what a failure of that task means
    assert (
        client.get(q.format("r1", "gate_challenger"), follow_redirects=False).headers["location"]
        == "/airloop/runbooks/gate_refused"
    )
    assert client.get(q.format("r1", "other"), follow_redirects=False).headers["location"] == "/airloop/runbooks"
