from __future__ import annotations

import json
import random

import pandas as pd
import pytest
from starlette.testclient import TestClient

from airloop.http import HttpClient, HttpError
from airloop.serving.client import ModelServerClient
from airloop.serving.prediction_log import PredictionLog, read_log
from airloop.serving.protocol import RequestError, parse_request
from airloop.serving.server import (
    LATENCY_BUCKETS,
    PREDICTION_BUCKETS,
    Metrics,
    ModelService,
    Variant,
    choose_variant,
    create_app,
    load_variants,
    prediction_bounds,
)
from tests.conftest import free_port

pytestmark = pytest.mark.unit


class Broken:
    """A challenger that fails on every request (a crashing model)."""

    def predict(self, df):
        raise RuntimeError("CUDA error: device-side assert triggered")


@pytest.fixture()
def service(champion, tmp_path):
    uri, _ = champion
    champ, _ = load_variants("flight_delays", uri)
    chall = Variant("challenger", "99", champ.model)
    return ModelService(
        "flight_delays",
        champ,
        chall,
        0.5,
        PredictionLog(tmp_path, "flight_delays"),
        max_body=64_000,
        seed=1,
    )


def _records(rows):
    return json.loads(rows.to_json(orient="records"))


@pytest.mark.heavy
def test_every_json_format_and_csv_gives_the_in_process_answer(service, champion):
    _, rows = champion
    rows = rows.head(5)
    expected = service.variants["champion"].model.predict(rows)["prediction"].tolist()
    split = json.loads(rows.to_json(orient="split", index=False))
    bodies = [
        ({"dataframe_split": {"columns": split["columns"], "data": split["data"]}}, "application/json"),
        ({"dataframe_records": _records(rows)}, "application/json"),
        ({"instances": _records(rows)}, "application/json"),
        ({"inputs": {c: json.loads(rows[c].to_json(orient="values")) for c in rows.columns}}, "application/json"),
    ]
    client = TestClient(create_app(service))
    for body, ctype in bodies:
        r = client.post(
            "/invocations", content=json.dumps(body), headers={"content-type": ctype, "x-request-key": "k1"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == pytest.approx(expected, abs=1e-6)
    r = client.post("/invocations", content=rows.to_csv(index=False), headers={"content-type": "text/csv"})
    assert r.status_code == 200 and r.json()["predictions"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.heavy
@pytest.mark.parametrize(
    ("body", "ctype", "status", "words"),
    [
        (b"year,month\n2013,1", "text/plain", 415, "unsupported content type"),
        (b"{not json", "application/json", 400, "malformed JSON"),
        (b'{"rows": []}', "application/json", 400, "exactly one of"),
        (b'{"dataframe_records": [{"year": 2013}]}', "application/json", 400, "missing input columns"),
        (b"x" * 70_000, "application/json", 413, "limit is 64000"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_why(service, body, ctype, status, words):
    client = TestClient(create_app(service))
    r = client.post("/invocations", content=body, headers={"content-type": ctype})
    assert r.status_code == status and words in r.json()["message"]
    assert "server_errors" not in service.metrics.render()  # never counted against a variant


@pytest.mark.heavy
def test_failing_challenger_falls_back_to_the_champion(service, champion):
    _, rows = champion
    service.variants["challenger"] = Variant("challenger", "99", Broken())
    service.set_weight(1.0)
    body = json.dumps({"dataframe_records": _records(rows.head(3))})
    status, out = service.invoke(body.encode(), "application/json")
    assert status == 200 and out["variant"] == "champion"
    assert 'airloop_server_errors_total{variant="challenger"} 1.0' in service.metrics.render()


def test_traffic_share_tracks_the_weight():
    rng = random.Random(7)
    for weight in (0.1, 0.25, 0.5):
        keyed = sum(choose_variant(f"req-{i}", weight, rng) == "challenger" for i in range(10_000)) / 10_000
        unkeyed = sum(choose_variant(None, weight, rng) == "challenger" for i in range(10_000)) / 10_000
        assert abs(keyed - weight) <= 0.01 and abs(unkeyed - weight) <= 0.01
    assert {choose_variant("same-key", 0.5, rng) for _ in range(50)} == {choose_variant("same-key", 0.5, rng)}  # sticky
    assert choose_variant("k", 0.0, rng) == "champion"


@pytest.mark.heavy
def test_every_prediction_is_logged_and_survives_a_torn_write(service, champion, tmp_path):
    _, rows = champion
    for i in range(3):
        status, out = service.invoke(
            json.dumps({"dataframe_records": _records(rows.head(4))}).encode(), "application/json", f"key{i}"
        )
        assert status == 200
    service.log.close()
    logged, partial = read_log(tmp_path, "flight_delays")
    assert len(logged) == 12 and partial == 0
    assert {e["variant"] for e in logged} <= {"champion", "challenger"}
    assert all(set(service.request_columns) <= set(e["inputs"]) and 0 <= e["output"] <= 1 for e in logged)
    # a crash in the middle of a write leaves a partial line: skipped, counted, nothing else lost
    f = next((tmp_path / "predictions" / "flight_delays").glob("ds=*/*.jsonl"))
    with open(f, "a") as fh:
        fh.write('{"request_id": "half')
    logged, partial = read_log(tmp_path, "flight_delays")
    assert len(logged) == 12 and partial == 1


@pytest.mark.heavy
def test_metrics_and_info_endpoints(service, champion):
    _, rows = champion
    client = TestClient(create_app(service))
    assert client.get("/ping").status_code == 200 and client.get("/health").status_code == 200
    assert client.get("/version").json()["variants"] == {
        "champion": service.variants["champion"].version,
        "challenger": "99",
    }
    client.post(
        "/invocations",
        content=json.dumps({"dataframe_records": _records(rows.head(2))}),
        headers={"content-type": "application/json", "x-request-key": "m"},
    )
    text = client.get("/metrics").text
    assert "airloop_requests_total" in text and "airloop_request_latency_seconds_bucket" in text
    assert "airloop_prediction_bucket" in text
    # the real pyfunc carries the deciles of its reference predictions: they are the histogram's bounds
    edges = service.variants["champion"].model.unwrap_python_model().prediction_edges
    assert edges and service.metrics.buckets["prediction"] == tuple(edges) != PREDICTION_BUCKETS
    assert f',le="{edges[0]}"}}' in text  # whichever variant served, over the champion's bounds


def test_protocol_rejects_empty_tables():
    with pytest.raises(RequestError, match="no rows"):
        parse_request(b'{"dataframe_records": []}', "application/json", 1000)
    with pytest.raises(RequestError, match="no rows"):
        parse_request(b"year,month\n", "text/csv", 1000)
    assert isinstance(parse_request(b"a,b\n1,2\n", "text/csv; charset=utf-8", 1000), pd.DataFrame)


@pytest.mark.heavy
def test_admin_weight_and_reload(service, champion):
    uri, _ = champion
    app = create_app(service, loader=lambda: load_variants("flight_delays", uri), admin_token="tok")
    client = TestClient(app, headers={"Authorization": "Bearer tok"})
    assert client.put("/admin/weight", json={"weight": 0.25}).json()["challenger_weight"] == 0.25
    assert client.put("/admin/weight", json={"weight": 3}).status_code == 400
    info = client.post("/admin/reload").json()  # the registry has no challenger: weight drops to 0
    assert info["variants"] == {"champion": service.variants["champion"].version} and info["challenger_weight"] == 0.0


@pytest.mark.heavy
def test_a_killed_server_loses_no_acknowledged_prediction(champion, tmp_path):
    """SIGKILL the real server process under load, restart it: every 200 answer is in the log."""
    import os
    import signal
    import subprocess
    import sys
    import time

    uri, rows = champion
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [
        sys.executable,
        "-m",
        "airloop.serving.server",
        "--model",
        "flight_delays",
        "--port",
        str(port),
        "--data-root",
        str(tmp_path),
    ]

    def start():
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        for _ in range(120):
            try:
                HttpClient(f"http://127.0.0.1:{port}", timeout=1, retries=0).get("/ping")
                return proc
            except HttpError:
                time.sleep(0.25)
        proc.kill()
        raise AssertionError("the server did not start")

    body = json.dumps({"dataframe_records": _records(rows.head(2))}).encode()
    client = ModelServerClient(f"http://127.0.0.1:{port}", timeout=10, retries=0)
    acked, refused = [], 0
    proc = start()
    try:
        for i in range(120):
            if i == 60:
                os.killpg(proc.pid, signal.SIGKILL)  # mid-load, no chance to clean up
                proc.wait()
                proc = start()
            try:
                acked.append(client.invocations(body)["request_id"])
            except HttpError:
                refused += 1
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    logged, partial = read_log(tmp_path, "flight_delays")
    logged_ids = {e["request_id"] for e in logged}
    assert len(acked) >= 110
    assert set(acked) <= logged_ids, f"{len(set(acked) - logged_ids)} acknowledged predictions missing"
    assert len(list((tmp_path / "predictions" / "flight_delays").glob("ds=*/*.jsonl"))) == 2  # one file per process


@pytest.mark.heavy
def test_a_new_challenger_starts_with_no_traffic(service):
    champ, chall = service.variants["champion"], service.variants["challenger"]
    service.set_weight(0.5)
    service.reload(champ, chall)  # the same challenger: its canary share stays
    assert service.weight == 0.5
    service.reload(
        champ, Variant("challenger", "100", chall.model)
    )  # another version: only its canary gives it a share
    assert service.weight == 0.0


@pytest.mark.heavy
def test_the_event_time_partitions_the_log_and_a_bad_one_is_a_400(service, champion, tmp_path):
    _, rows = champion
    body = json.dumps({"dataframe_records": _records(rows.head(2))}).encode()
    status, out = service.invoke(body, "application/json", None, "yesterday")
    assert status == 400 and "X-Event-Time" in out["message"]
    status, out = service.invoke(body, "application/json", None, "2013-07-04T15:00:00")
    assert status == 200
    logged, _ = read_log(tmp_path, "flight_delays", "2013-07-04")
    assert [r["event_time"] for r in logged] == ["2013-07-04T15:00:00+00:00"] * 2


# --- the prediction histogram: bucket bounds from the champion ---------------------------------------


class Scaled:
    """A stub model: ``prediction = factor * x``; ``prediction_edges`` as the airloop pyfunc has them."""

    def __init__(self, factor: float, edges=None):
        self.factor, self.prediction_edges = factor, edges

    def predict(self, df):
        return pd.DataFrame({"prediction": self.factor * df["x"].astype(float)})


class Pyfunc:
    """What ``mlflow.pyfunc.load_model`` returns: the python model (with the edges) is inside."""

    def __init__(self, inner):
        self.inner = inner

    def unwrap_python_model(self):
        return self.inner

    def predict(self, df):
        return self.inner.predict(df)


def _stub_service(champion, challenger=None, **kw):
    return ModelService(
        "stub",
        Variant("champion", "1", champion),
        Variant("challenger", "2", challenger) if challenger else None,
        0.0,
        None,
        request_columns=["x"],
        seed=3,
        **kw,
    )


def _buckets(text, variant):
    return [line for line in text.splitlines() if line.startswith(f'airloop_prediction_bucket{{variant="{variant}"')]


def test_prediction_bounds_come_from_the_champion_then_the_caller_then_the_fixed_buckets():
    edges = [70.0, 50.0, 60.0, 60.0, float("nan")]  # unsorted, repeated, not finite: cleaned
    assert prediction_bounds(Scaled(1, edges)) == (50.0, 60.0, 70.0)
    assert prediction_bounds(Pyfunc(Scaled(1, edges))) == (50.0, 60.0, 70.0)
    assert prediction_bounds(Scaled(1, None), [5, 1]) == (1.0, 5.0)  # an older model: the caller's bounds
    assert prediction_bounds(Scaled(1, []), None) == PREDICTION_BUCKETS
    assert prediction_bounds(object(), None) == PREDICTION_BUCKETS  # e.g. an HttpModel


def test_both_variants_are_histogrammed_on_the_champions_bounds():
    service = _stub_service(Scaled(1, [10.0, 20.0]), Scaled(1, [100.0, 200.0, 300.0]))
    service.set_weight(0.5)
    for i in range(40):
        status, _ = service.invoke(json.dumps({"dataframe_records": [{"x": 15}]}).encode(), "application/json", f"k{i}")
        assert status == 200
    text = service.metrics.render()
    for variant in ("champion", "challenger"):  # the format stays: airloop_prediction_bucket{variant,le}
        lines = _buckets(text, variant)
        assert [line.split('le="')[1].split('"')[0] for line in lines] == ["10.0", "20.0", "+Inf"]
        assert float(lines[0].split()[-1]) == 0 and float(lines[1].split()[-1]) == float(lines[2].split()[-1]) > 0
    assert _stub_service(Scaled(1), prediction_edges=[5.0]).metrics.buckets["prediction"] == (5.0,)


def test_a_champion_with_other_bounds_resets_the_prediction_histograms_only():
    champ = Scaled(1, [10.0, 20.0])
    service = _stub_service(champ)
    body = json.dumps({"dataframe_records": [{"x": 15}, {"x": 25}]}).encode()
    service.invoke(body, "application/json")
    service.reload(Variant("champion", "1", champ), None)  # the same bounds: the histograms go on
    service.invoke(body, "application/json")
    assert 'airloop_prediction_count{variant="champion"} 4.0' in service.metrics.render()
    service.reload(Variant("champion", "3", Scaled(1, [12.0, 24.0, 36.0])), None)
    text = service.metrics.render()
    assert _buckets(text, "champion") == [] and 'airloop_requests_total{variant="champion"} 2.0' in text
    service.invoke(body, "application/json")
    assert [line.split('le="')[1].split('"')[0] for line in _buckets(service.metrics.render(), "champion")] == [
        "12.0",
        "24.0",
        "36.0",
        "+Inf",
    ]


def test_metrics_given_other_buckets_start_that_histogram_over():
    m = Metrics()
    m.observe("request_latency_seconds", "champion", 0.02, LATENCY_BUCKETS)
    m.observe("prediction", "champion", 0.3)  # the default bounds
    assert m.set_buckets("prediction", PREDICTION_BUCKETS) is False and ("prediction", "champion") in m.hist
    m.observe("prediction", "champion", 3.0, (1.0, 5.0))
    assert m.hist[("prediction", "champion")] == [0.0, 1.0, 3.0, 1.0]  # le 1, le 5, sum, count
    assert m.hist[("request_latency_seconds", "champion")][-1] == 1.0  # other histograms untouched
