"""The webhook routes of the plugin against the session's real metadata database (DAGs parsed into it).

The routes run in-process here (FastAPI's test client); ``tests/integration/stack/test_webhook_load.py`` sends
deliveries to the real API server.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import time

import pytest
from airloop_local import stack
from fastapi.testclient import TestClient

from airloop import webhooks as wh
from airloop.storage import default_data_root_uri
from tests.conftest import REPO

pytestmark = pytest.mark.integration

SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXdlYmhvb2tzIQ=="
GH_SECRET = "a plain github secret"
SOURCE, GH_SOURCE = "flight-delays-landing", "flight-delays-github"
DAG_ID = "flight_delays__ingest"


@pytest.fixture(scope="module")
def client(airflow_db):
    stack.run_airflow(airflow_db, "dags", "reserialize", capture=True)
    spec = importlib.util.spec_from_file_location("airloop_plugin_wh", REPO / "plugins" / "airloop_plugin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mp = pytest.MonkeyPatch()
    # a rotation under way: senders may still sign with the previous secret, which the tests use
    mp.setenv(
        "AIRFLOW_CONN_AIRLOOP_WEBHOOK_FLIGHT_DELAYS",
        json.dumps(
            {
                "conn_type": "generic",
                "password": "whsec_bmV3LXNlY3JldC1hZnRlci1yb3RhdGlvbiE=",
                "extra": {"previous_secrets": [SECRET]},
            }
        ),
    )
    mp.setenv(
        "AIRFLOW_CONN_AIRLOOP_WEBHOOK_FLIGHT_DELAYS_GITHUB", json.dumps({"conn_type": "generic", "password": GH_SECRET})
    )
    yield TestClient(mod.app)
    mp.undo()


def landing(day: str) -> str:
    return f"{default_data_root_uri()}/landing/flight_delays/ds={day}/flights.csv"


def signed(body: bytes, msg_id: str, secret: str = SECRET, ts: int | None = None) -> dict[str, str]:
    return {**wh.signed_headers("standard", secret, msg_id, body, ts), "content-type": "application/json"}


def runs(run_id: str) -> list:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as s:
        return [
            (r.run_id, r.conf, r.logical_date, r.data_interval_start, r.data_interval_end, r.triggering_user_name)
            for r in s.query(DagRun).filter(DagRun.dag_id == DAG_ID, DagRun.run_id == run_id)
        ]


def test_signed_delivery_creates_one_run_and_a_repeat_finds_it(client):
    body = json.dumps({"source_uri": landing("2013-07-15"), "day": "2013-07-15", "rows": 912}).encode()
    r = client.post(f"/webhooks/{SOURCE}", content=body, headers=signed(body, "msg_route_1"))
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["dag_run_id"] == "webhook__flight-delays-landing__msg_route_1" and out["created"] is True
    assert out["dag_id"] == DAG_ID and out["state"] == "queued"
    [(run_id, conf, logical, start, end, who)] = runs(out["dag_run_id"])
    assert conf["source_uri"] == landing("2013-07-15") and conf["webhook"]["delivery_id"] == "msg_route_1"
    assert conf["webhook"]["rows"] == 912
    assert (start.isoformat(), end.isoformat()) == ("2013-07-15T00:00:00+00:00", "2013-07-16T00:00:00+00:00")
    assert logical == start and who == f"webhook:{SOURCE}"

    # the sender retries the same delivery (new timestamp, new signature): same run, nothing created
    again = client.post(f"/webhooks/{SOURCE}", content=body, headers=signed(body, "msg_route_1"))
    assert (
        again.status_code == 200
        and again.json()["dag_run_id"] == out["dag_run_id"]
        and again.json()["created"] is False
    )
    assert len(runs(out["dag_run_id"])) == 1

    # another delivery (another id, another body) for a day that already has its run: 409, naming the run
    # and how to re-run it; it never tells anyone to delete a run (that would let a replay through)
    body2 = json.dumps({"source_uri": landing("2013-07-15"), "day": "2013-07-15", "rows": 913}).encode()
    other = client.post(f"/webhooks/{SOURCE}", content=body2, headers=signed(body2, "msg_route_2"))
    assert other.status_code == 409 and out["dag_run_id"] in other.json()["detail"]
    detail = other.json()["detail"]
    assert "airloop airflow tasks clear flight_delays__ingest -s 2013-07-15 -e 2013-07-15" in detail
    assert "re-run" in detail and "delete" not in detail.lower()
    assert runs("webhook__flight-delays-landing__msg_route_2") == []


def test_github_style_delivery(client):
    body = json.dumps({"source_uri": landing("2013-07-16"), "day": "2013-07-16"}).encode()
    headers = wh.signed_headers("github", GH_SECRET, "72d3162e-cc78-11e3-81ab-4c9367dc0958", body)
    r = client.post(f"/webhooks/{GH_SOURCE}", content=body, headers=headers)
    assert r.status_code == 202, r.text
    assert len(runs("webhook__flight-delays-github__72d3162e-cc78-11e3-81ab-4c9367dc0958")) == 1


def test_refusals_say_why_and_create_nothing(client):
    good = json.dumps({"source_uri": landing("2013-07-17"), "day": "2013-07-17"}).encode()

    r = client.post("/webhooks/nobody", content=good, headers=signed(good, "m1"))
    assert (r.status_code, r.json()["detail"]) == (404, "no webhook source named 'nobody'")

    big = b"{" + b" " * 70000 + b"}"
    r = client.post(f"/webhooks/{SOURCE}", content=big, headers=signed(big, "m2"))
    assert r.status_code == 413 and "65536 bytes" in r.json()["detail"]

    r = client.post(
        f"/webhooks/{SOURCE}", content=good, headers=signed(good, "m3", secret="whsec_" + "V3JvbmdXcm9uZ1dyb25nIQ==")
    )
    assert (r.status_code, r.json()["detail"]) == (401, "no webhook-signature matches the body")

    r = client.post(f"/webhooks/{SOURCE}", content=good, headers={"webhook-id": "m4"})
    assert r.status_code == 401 and "missing header" in r.json()["detail"]

    r = client.post(f"/webhooks/{SOURCE}", content=good, headers=signed(good, "m5", ts=int(time.time()) - 400))
    assert r.status_code == 401 and "s old" in r.json()["detail"]

    bad = json.dumps({"source_uri": landing("2013-07-17"), "day": "17/07/2013"}).encode()
    r = client.post(f"/webhooks/{SOURCE}", content=bad, headers=signed(bad, "m6"))
    assert r.status_code == 400 and r.json()["field"] == "day" and r.json()["detail"].startswith("day: ")

    outside = json.dumps({"source_uri": "/etc/passwd", "day": "2013-07-17"}).encode()
    r = client.post(f"/webhooks/{SOURCE}", content=outside, headers=signed(outside, "m7"))
    assert r.status_code == 400 and r.json()["field"] == "source_uri" and "landing/flight_delays" in r.json()["detail"]

    for i in range(1, 8):
        assert runs(f"webhook__{SOURCE}__m{i}") == []


def _unavailable(r) -> str:
    """A 503 as the route must give it: a Retry-After header (seconds) and a reason."""
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) > 0
    return r.json()["detail"]


def test_a_source_without_its_connection_is_a_transient_503(client, monkeypatch):
    """The operator's configuration, not the sender's fault: 503 with Retry-After (the sender retries until
    the connection is there), naming the connection, never a 500."""
    conn = "AIRFLOW_CONN_AIRLOOP_WEBHOOK_FLIGHT_DELAYS_GITHUB"
    body = b'{"source_uri": "/x", "day": "2013-07-18"}'
    headers = wh.signed_headers("github", GH_SECRET, "x1", body)
    monkeypatch.delenv(conn)
    assert "airloop_webhook_flight_delays_github" in _unavailable(
        client.post(f"/webhooks/{GH_SOURCE}", content=body, headers=headers)
    )
    for broken in ({"conn_type": "generic"}, {"conn_type": "generic", "password": "whsec_not base64!"}):
        monkeypatch.setenv(conn, json.dumps(broken))
        detail = _unavailable(client.post(f"/webhooks/{GH_SOURCE}", content=body, headers=headers))
        assert "airloop_webhook_flight_delays_github" in detail and "not base64" not in detail
    assert runs("webhook__flight-delays-github__x1") == []


@pytest.mark.parametrize("day", ["2012-06-01", "2014-01-01", "9999-12-31", "0001-01-01", 1373846400])
def test_days_outside_the_schedule_are_400_and_create_no_run(client, day):
    """Before the model's start date or after its end date, Airflow makes a run without tasks that shows
    success; 9999-12-31 overflowed into a 503 an obedient sender retried for ever."""
    body = json.dumps({"source_uri": landing("2013-07-19"), "day": day}).encode()
    msg_id = f"day_{abs(hash(str(day)))}"
    r = client.post(f"/webhooks/{SOURCE}", content=body, headers=signed(body, msg_id))
    assert r.status_code == 400 and r.json()["field"] == "day", r.text
    if day in ("2012-06-01", "2014-01-01", "9999-12-31", "0001-01-01"):
        assert "from 2013-01-01 to 2013-12-31" in r.json()["detail"]
    assert runs(f"webhook__{SOURCE}__{msg_id}") == []


def test_a_run_without_tasks_is_never_created(client, monkeypatch):
    """Whatever the domain check says, the route refuses to create a run that would have no task."""
    monkeypatch.setattr(
        wh,
        "day_interval",
        lambda day, schedule, now=None: (
            dt.datetime(2012, 6, 1, tzinfo=dt.UTC),
            dt.datetime(2012, 6, 2, tzinfo=dt.UTC),
        ),
    )
    body = json.dumps({"source_uri": landing("2012-06-01"), "day": "2012-06-01"}).encode()
    r = client.post(f"/webhooks/{SOURCE}", content=body, headers=signed(body, "no_tasks_1"))
    assert r.status_code == 400 and r.json()["field"] == "day" and "no task" in r.json()["detail"], r.text
    assert runs(f"webhook__{SOURCE}__no_tasks_1") == []


def test_a_replayed_github_body_under_a_new_delivery_id_finds_the_first_run(client):
    """The GitHub-style scheme signs neither the id nor a time: the same body under a fresh id is a replay.
    It answers 200 with the original run and creates nothing, the run conf keeping the body's hash."""
    body = json.dumps({"source_uri": landing("2013-07-20"), "day": "2013-07-20", "rows": 5}).encode()
    first = client.post(
        f"/webhooks/{GH_SOURCE}", content=body, headers=wh.signed_headers("github", GH_SECRET, "gh-1", body)
    )
    assert first.status_code == 202, first.text
    [(_, conf, *_)] = runs(first.json()["dag_run_id"])
    assert conf["webhook"]["body_sha256"] == wh.body_sha256(body) and conf["webhook"]["rows"] == 5
    replay = client.post(
        f"/webhooks/{GH_SOURCE}", content=body, headers=wh.signed_headers("github", GH_SECRET, "gh-2", body)
    )
    assert replay.status_code == 200, replay.text
    out = replay.json()
    assert out["dag_run_id"] == first.json()["dag_run_id"] and out["created"] is False and out["replay_of"] == "gh-1"
    assert runs(f"webhook__{GH_SOURCE}__gh-2") == []


@pytest.mark.parametrize(
    ("error", "why"),
    [
        ("lookup", "not parsed yet"),
        ("operational", "busy"),
    ],
)
def test_every_503_carries_retry_after(client, monkeypatch, error, why):
    import airloop_webhook_routes as routes
    from sqlalchemy.exc import OperationalError

    def fail(*args, **kwargs):
        if error == "lookup":
            raise LookupError("DAG flight_delays__ingest is not parsed yet")
        raise OperationalError("INSERT ...", {}, Exception("database is locked"))

    monkeypatch.setattr(routes, "create_run", fail)
    body = json.dumps({"source_uri": landing("2013-07-21"), "day": "2013-07-21"}).encode()
    assert why in _unavailable(client.post(f"/webhooks/{SOURCE}", content=body, headers=signed(body, f"busy_{error}")))
