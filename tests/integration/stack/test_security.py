"""The attacks of the hardening review, run against the real local stack over HTTP and through the CLI.

Each test is one class of attack; each asserts the answer the stack gives now (a 401, or a 4xx that says
why) and that nothing changed state: no run created, no file read outside its zone, no prediction logged,
no alias moved. Traffic goes to loopback only.

The days this module delivers or ingests (2013-07-20 to 2013-07-24) are its own: Airflow keeps one run per
day of the ingest DAG, so a run left for a day another module delivers would answer that delivery instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from airloop import webhooks as wh
from airloop.http import HttpClient
from tests.conftest import REPO, free_port
from tests.integration.stack.conftest import delete_runs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOURCE = "flight-delays-landing"  # Standard Webhooks scheme
GITHUB_SOURCE = "flight-delays-github"  # GitHub-style scheme
ANY = tuple(range(200, 600))  # every status comes back as an answer: the tests look at it


def _status_json(r) -> tuple[int, dict]:
    try:
        body = r.json()
    except ValueError:
        body = {"text": r.text()}
    return r.status, body if isinstance(body, dict) else {"answer": body}


def _deliver(s, source: str, body: bytes, delivery_id: str | None = None) -> tuple[int, dict]:
    from airloop.config import find_webhook_source

    _, src = find_webhook_source(source)
    secret = s.webhook_secret(src.connection_id)
    headers = wh.signed_headers(src.scheme, secret, delivery_id or f"sec_{uuid.uuid4().hex[:12]}", body)
    r = HttpClient(f"{s.base_url}/airloop/webhooks", retries=0).post(
        source, data=body, headers={**headers, "Content-Type": "application/json"}, ok=ANY
    )
    return _status_json(r)


def _runs(api, dag_id: str) -> set[str]:
    return {r["dag_run_id"] for r in api.dag_runs(dag_id)}


# -- 1. authentication on every state-changing route ------------------------------------------------
def test_model_server_admin_routes_need_the_token(running_stack, cfg):
    s, _ = running_stack
    url = s.model_server_url_for(cfg.name)
    client = HttpClient(url, retries=0)
    for method, path, body in (("PUT", "/admin/weight", {"weight": 1.0}), ("POST", "/admin/reload", {})):
        anonymous = client.request(method, path, json_body=body, ok=ANY)
        assert anonymous.status == 401, anonymous.text()
        assert anonymous.headers.get("www-authenticate", anonymous.headers.get("WWW-Authenticate", "")).startswith(
            "Bearer"
        )
        wrong = client.request(method, path, json_body=body, headers={"Authorization": "Bearer nope"}, ok=ANY)
        assert wrong.status == 401, wrong.text()
    assert client.get("/version").json()["challenger_weight"] == 0.0  # nothing moved


def test_mlflow_refuses_writes_without_credentials(running_stack, cfg):
    s, _ = running_stack
    client = HttpClient(s.mlflow_url, retries=0)
    create = client.post(
        "/api/2.0/mlflow/registered-models/create", json_body={"name": f"intruder-{uuid.uuid4().hex[:6]}"}, ok=ANY
    )
    assert create.status == 401, create.text()
    alias = client.post(
        "/api/2.0/mlflow/registered-models/alias",
        json_body={"name": cfg.name, "alias": "champion", "version": "1"},
        ok=ANY,
    )
    assert alias.status == 401, alias.text()
    assert client.get("/health", ok=ANY).status == 200  # health stays open for the stack's checks


def test_plugin_docs_need_a_login(running_stack):
    s, api = running_stack
    client = HttpClient(s.base_url, retries=0)
    for path in ("/airloop/docs", "/airloop/openapi.json", "/airloop/redoc"):
        r = client.get(path, ok=ANY)
        assert r.status in (401, 403, 404), (path, r.status)
    bearer = {"Authorization": f"Bearer {api.token()}"}
    assert client.get("/airloop/openapi.json", headers=bearer, ok=ANY).status == 200


# -- 2. confinement by resolved path -----------------------------------------------------------------
def test_webhook_source_uris_outside_the_landing_zone_are_refused(running_stack, cfg, tmp_path):
    s, api = running_stack
    dag_id = cfg.dag_id("ingest")
    api.wait_for_dag(dag_id)
    landing = Path(s.data_root) / "landing" / cfg.name
    link_dir = landing / "ds=2013-07-20"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "passwd.csv"
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/passwd")
    before = _runs(api, dag_id)
    attacks = {
        "symlink": str(link),
        "encoded traversal": f"{landing}/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "chained fsspec": f"simplecache::file://{landing}/ds=2013-07-20/flights.csv",
        "chained to http": f"file://{landing}/ds=2013-07-20/x.csv::http://127.0.0.1:1/",
        "NUL byte": f"{landing}/ds=2013-07-20/flights.csv\u0000.txt",
        "another protocol": f"http://127.0.0.1:{s.port}/etc/passwd",
    }
    for name, uri in attacks.items():
        status, answer = _deliver(s, SOURCE, json.dumps({"source_uri": uri, "day": "2013-07-20"}).encode())
        assert status == 400, (name, status, answer)
        assert answer.get("field") == "source_uri", (name, answer)
    assert _runs(api, dag_id) == before
    quarantined = Path(s.data_root) / "quarantine" / cfg.name / "ds=2013-07-20"
    assert not quarantined.exists()


def test_files_route_refuses_nul_and_traversal(running_stack):
    s, api = running_stack
    bearer = {"Authorization": f"Bearer {api.token()}"}
    client = HttpClient(s.base_url, retries=0)
    for path in (
        "/airloop/files/reports/a%00.html",
        "/airloop/files/reports/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/airloop/files/..%2f..%2fetc/passwd",
        "/airloop/files/quarantine/x/%2e%2e/%2e%2e/raw/x.json",
    ):
        r = client.get(path, headers=bearer, ok=ANY)
        assert 400 <= r.status < 500, (path, r.status, r.text()[:200])
        assert "root:" not in r.text()


def test_cli_refuses_partitions_outside_the_quarantine(running_stack, cfg, capsys):
    """A published partition reached by ``../`` from the quarantine must not be shown, released or rejected
    as if it were quarantined."""
    import datetime as dt

    from airloop_local import cli

    from airloop.ingest import Interval, ingest_batch
    from airloop.sources import nycflights13
    from airloop.storage import DataRoot

    s, _ = running_stack
    root = DataRoot(s.data_root)
    day = dt.date(2013, 7, 23)
    nycflights13.replay_days(root, cfg.name, [day], file_name=cfg.source.file_name)
    start = dt.datetime(2013, 7, 23, tzinfo=dt.UTC)
    interval = Interval(start.isoformat(), (start + dt.timedelta(days=1)).isoformat())
    ingest_batch(cfg, root, partition=f"ds={day}", interval=interval, run_id="security-probe")
    published = f"../../raw/{cfg.name}/ds={day}"
    for partition in (published, "ds=2013-13-45", f"ds={day}/../../x", "run=a/b"):
        for verb in (["show"], ["reject", "--reason", "probe"]):
            capsys.readouterr()
            rc = cli.main(["--state-dir", s.state_dir, "quarantine", verb[0], cfg.name, partition, *verb[1:]])
            out = capsys.readouterr()
            assert rc == 2, (partition, verb, out)
            assert "partition" in (out.out + out.err).lower()
    assert not list(Path(s.data_root, "raw", cfg.name, f"ds={day}").glob("*decision*"))


def test_a_symlinked_landing_file_is_not_read(running_stack, cfg):
    """The scheduled path: the day's landing file is a symlink to a file outside the landing zone. The
    ingest run fails with the confinement rule, and nothing of the target is copied anywhere."""
    s, api = running_stack
    dag_id = cfg.dag_id("ingest")
    api.wait_for_dag(dag_id)
    api.unpause(dag_id)
    day = dt.date(2013, 7, 24)
    target = Path(s.data_root, "landing", cfg.name, f"ds={day}", cfg.source.file_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    target.symlink_to("/etc/passwd")
    from airloop_local.cli.common import wait_runs

    run_id = api.trigger_interval(dag_id, day)
    assert wait_runs(api, dag_id, {run_id}, timeout_s=600) == {run_id: "failed"}
    tis = {t["task_id"]: t for t in api.task_instances(dag_id, run_id)}
    assert tis["ingest_batch"]["state"] == "failed"
    assert tis["ingest_batch"]["try_number"] == 1  # a refusal is not retried
    zones = [Path(s.data_root, zone, cfg.name) for zone in ("raw", "quarantine", "reports")]
    written = [p for z in zones if z.exists() for p in z.rglob("*") if p.is_file() and not p.is_symlink()]
    assert not [p for p in written if b"root:x:0:0" in p.read_bytes()]


# -- 4. webhook days and replays ---------------------------------------------------------------------
def test_webhook_days_outside_the_schedule_are_400_and_create_no_run(running_stack, cfg):
    s, api = running_stack
    dag_id = cfg.dag_id("ingest")
    api.wait_for_dag(dag_id)
    landing = f"{s.data_root}/landing/{cfg.name}/ds=2013-07-21/{cfg.source.file_name}"
    before = _runs(api, dag_id)
    for day in ("2012-06-01", "2014-01-01", "9999-12-31", "0001-01-01", "2013-02-30", "yesterday"):
        status, answer = _deliver(s, SOURCE, json.dumps({"source_uri": landing, "day": day}).encode())
        assert status == 400, (day, status, answer)
        assert answer.get("field") == "day", (day, answer)
    assert _runs(api, dag_id) == before


def test_deeply_nested_json_is_400_not_500(running_stack):
    s, _ = running_stack
    body = b"[" * 20000 + b"]" * 20000
    status, answer = _deliver(s, SOURCE, body)
    assert status == 400, (status, answer)


def test_github_style_replay_under_a_new_delivery_id_creates_nothing(running_stack, cfg):
    s, api = running_stack
    dag_id = cfg.dag_id("ingest")
    api.wait_for_dag(dag_id)
    was_paused = api.get(f"/api/v2/dags/{dag_id}")["is_paused"]
    api.patch(f"/api/v2/dags/{dag_id}", {"is_paused": True})  # the run is created, not executed
    try:
        landing = f"{s.data_root}/landing/{cfg.name}/ds=2013-07-22/{cfg.source.file_name}"
        body = json.dumps({"source_uri": landing, "day": "2013-07-22"}).encode()
        first_status, first = _deliver(s, GITHUB_SOURCE, body, delivery_id=f"gh_{uuid.uuid4().hex[:10]}")
        assert first_status == 202, first
        before = _runs(api, dag_id)
        replay_status, replay = _deliver(s, GITHUB_SOURCE, body, delivery_id=f"gh_{uuid.uuid4().hex[:10]}")
        assert replay_status in (200, 409), replay
        assert _runs(api, dag_id) == before
        assert "delete" not in json.dumps(replay).lower()
        if replay_status == 200:
            assert replay["dag_run_id"] == first["dag_run_id"]
    finally:
        delete_runs(dag_id, f"webhook__{GITHUB_SOURCE}__gh_")  # it would answer another module's delivery
        api.patch(f"/api/v2/dags/{dag_id}", {"is_paused": was_paused})


# -- 3. scoring: limits, schema, non-finite values, only declared columns logged ------------------------
@pytest.fixture(scope="module")
def scoring_server(champion, tmp_path_factory):
    """The real model server process (uvicorn) serving the session's trained champion, with an admin token."""
    uri, rows = champion
    root = tmp_path_factory.mktemp("security-serving")
    port = free_port()
    token = uuid.uuid4().hex
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "AIRLOOP_MODEL_SERVER_TOKEN": token}
    cmd = [sys.executable, "-m", "airloop.serving.server", "--model", "flight_delays", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--data-root", str(root)], env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if HttpClient(url, retries=0, timeout=2).get("/ping", ok=ANY).status == 200:
                    break
            except Exception:
                time.sleep(0.5)
        else:
            raise AssertionError("the model server did not start")
        yield url, token, root, rows
    finally:
        proc.terminate()
        proc.wait(30)


def _logged(root: Path) -> int:
    from airloop.serving.prediction_log import read_log

    return len(read_log(root, "flight_delays")[0])


def _record(rows, **changes) -> dict:
    rec = json.loads(rows.head(1).to_json(orient="records", date_format="iso"))[0]
    rec.update(changes)
    return rec


def _score(url: str, payload, headers: dict | None = None):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return HttpClient(url, retries=0, timeout=60).post(
        "/invocations", data=data, headers={"Content-Type": "application/json", **(headers or {})}, ok=ANY
    )


def test_bad_scoring_requests_get_a_4xx_and_are_never_logged(scoring_server):
    url, _, root, rows = scoring_server
    good = _score(url, {"dataframe_records": [_record(rows)]})
    assert good.status == 200, good.text()
    logged = _logged(root)
    numeric = next(c for c in rows.columns if rows[c].dtype.kind == "f")
    bad = {
        "huge float": {"dataframe_records": [_record(rows, **{numeric: 1e308})]},
        "infinity literal": b'{"dataframe_records": [{"' + numeric.encode() + b'": Infinity}]}',
        "NaN literal": b'{"dataframe_records": [{"' + numeric.encode() + b'": NaN}]}',
        "deep nesting": b"[" * 50000 + b"]" * 50000,
        "too many rows": {"dataframe_split": {"columns": [numeric], "data": [[1.0]] * 50_000}},  # compact
    }
    for name, payload in bad.items():
        r = _score(url, payload)
        assert 400 <= r.status < 500, (name, r.status, r.text()[:300])
        assert r.json()["message"], name
    r = _score(url, {"dataframe_records": [_record(rows)]}, headers={"X-Event-Time": "9999-12-31T23:59:59-23:59"})
    assert r.status == 400, r.text()
    assert _logged(root) == logged  # none of them reached the prediction log
    metrics = HttpClient(url, retries=0).get("/metrics").text()
    sums = [float(line.split()[-1]) for line in metrics.splitlines() if "_sum{" in line]
    assert sums and all(math.isfinite(v) for v in sums)
    assert "client_errors" in metrics


def test_chunked_bodies_are_cut_at_the_limit(scoring_server):
    """A chunked body announces no length: the server must stop reading at its limit and answer 413, not
    read 100 MB first. The client sends 1 MB chunks and looks for an answer after each one."""
    import select
    import socket

    url, _, _, _ = scoring_server
    host, port = url.removeprefix("http://").split(":")
    block = b" " * (1 << 20)
    chunk = b"%x\r\n" % len(block) + block + b"\r\n"
    sent, answer = 0, b""
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for _ in range(100):  # 100 MB
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(chunk)
                sent += len(block)
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 20 * (1 << 20), f"the server read {sent >> 20} MB before answering"


def test_only_declared_columns_are_logged(scoring_server, cfg):
    url, _, root, rows = scoring_server
    marker = f"secret-{uuid.uuid4().hex}"
    r = _score(url, {"dataframe_records": [_record(rows, smuggled=marker)]})
    assert r.status in (200, 400), r.text()
    logged = (Path(root) / "predictions").rglob("*.jsonl")
    assert not any(marker in f.read_text() for f in logged)


def test_scoring_server_admin_needs_the_token(scoring_server):
    url, token, _, _ = scoring_server
    client = HttpClient(url, retries=0)
    assert client.put("/admin/weight", json_body={"weight": 0.5}, ok=ANY).status == 401
    ok = client.put("/admin/weight", json_body={"weight": 0.0}, headers={"Authorization": f"Bearer {token}"}, ok=ANY)
    assert ok.status == 200, ok.text()
