"""The model server under hostile or careless traffic (issue 15), in process: admin routes need the bearer
token, scoring is rate-bounded, bodies are cut at the limit while streaming, rows and JSON depth are
bounded, values are checked against the model's schema and suite, a non-finite prediction is a failure of
its variant, and a refused request never reaches the prediction log or the canary's figures.

The model is a stub (no training): the schema, suite and limits are the real ``flight_delays`` config's.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from airloop.config import DeploymentConfig, get_pipeline
from airloop.serving.server import ModelService, TokenBucket, Variant, create_app

pytestmark = pytest.mark.unit

CFG = get_pipeline("flight_delays")
#: one real flight (2013-01-07, US 1117 EWR-CLT) as the replay sends it: request columns, outcome key, more
ROW: dict[str, Any] = {
    "year": 2013,
    "month": 1,
    "day": 7,
    "dep_time": 454.0,
    "sched_dep_time": 500,
    "sched_arr_time": 648,
    "carrier": "US",
    "flight": 1117,
    "tailnum": "N566UW",
    "origin": "EWR",
    "dest": "CLT",
    "distance": 529,
    "hour": 5,
    "minute": 0,
    "time_hour": "2013-01-07T10:00:00.000",
    "temp": 35.06,
    "dewp": 26.96,
    "humid": 72.03,
    "wind_dir": 290.0,
    "wind_speed": 4.60312,
    "wind_gust": None,
    "precip": 0.0,
    "pressure": 1021.7,
    "visib": 10.0,
}
TOKEN = "t0ken-for-tests"


class Logistic:
    """A stub model over real columns: sigmoid of the temperature (NaN in, NaN out, as a real model)."""

    def predict(self, df: pd.DataFrame) -> pd.DataFrame:
        t = df["temp"].astype(float).to_numpy()
        return pd.DataFrame({"prediction": 1.0 / (1.0 + np.exp(-(t - 50.0) / 10.0))})


class NaNModel:
    """A broken model: its predictions are not numbers."""

    def predict(self, df: pd.DataFrame) -> list[float]:
        return [float("nan")] * len(df)


class MemoryLog:
    """The prediction log in memory (what :class:`PredictionLog` would write)."""

    def __init__(self, fail: bool = False) -> None:
        self.records: list[dict[str, Any]] = []
        self.fail = fail

    def append(self, records: list[dict[str, Any]]) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.records.extend(records)


def make_service(
    champion: Any = None, challenger: Any = None, weight: float = 0.0, log: Any = None, **deployment: Any
) -> ModelService:
    dep = CFG.deployment.model_copy(update=deployment)
    return ModelService(
        "flight_delays",
        Variant("champion", "1", champion or Logistic()),
        Variant("challenger", "2", challenger) if challenger else None,
        weight,
        MemoryLog() if log is None else log,
        seed=5,
        deployment=dep,
    )


def records(*rows: dict[str, Any]) -> bytes:
    return json.dumps({"dataframe_records": list(rows)}).encode()


def observed(service: ModelService) -> float:
    """Observations in the prediction histograms, all variants."""
    return sum(h[-1] for (name, _), h in service.metrics.hist.items() if name == "prediction")


def counter(service: ModelService, name: str, variant: str) -> float:
    return service.metrics.counters.get((name, variant), 0.0)


def assert_refused(service: ModelService, status: int, out: dict[str, Any], code: int, *words: str) -> None:
    assert status == code, out
    for w in words:
        assert w in out["message"], out["message"]
    assert service.log.records == [] and observed(service) == 0
    assert counter(service, "requests", "champion") == 0 and counter(service, "server_errors", "champion") == 0


# --- 1. admin routes need the bearer token -------------------------------------------------------------


def test_admin_routes_refuse_a_missing_or_wrong_token_and_change_nothing():
    service = make_service(challenger=Logistic())
    app = create_app(
        service, loader=lambda: (service.variants["champion"], service.variants["challenger"]), admin_token=TOKEN
    )
    client = TestClient(app)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
        r = client.put("/admin/weight", json={"weight": 1.0}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
        r = client.post("/admin/reload", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
    assert service.weight == 0.0


def test_admin_routes_answer_the_right_token():
    service = make_service(challenger=Logistic())
    app = create_app(
        service, loader=lambda: (service.variants["champion"], service.variants["challenger"]), admin_token=TOKEN
    )
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.put("/admin/weight", json={"weight": 0.25}).status_code == 401
    assert client.put("/admin/weight", json={"weight": 0.25}, headers=auth).json()["challenger_weight"] == 0.25
    assert client.post("/admin/reload", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert client.put("/admin/weight", content=b"[" * 4000, headers=auth).status_code == 400
    assert client.put("/admin/weight", content=b"{" * 10_000_000, headers=auth).status_code == 413


def test_a_server_without_a_token_refuses_every_admin_request():
    service = make_service(challenger=Logistic())
    client = TestClient(create_app(service, loader=lambda: (service.variants["champion"], None)))
    for r in (
        client.put("/admin/weight", json={"weight": 1.0}, headers={"Authorization": "Bearer anything"}),
        client.post("/admin/reload"),
    ):
        assert r.status_code == 403 and "no token configured" in r.json()["message"], r.text
    assert service.weight == 0.0 and "challenger" in service.variants


def test_the_admin_token_comes_from_the_environment_or_a_file(monkeypatch, tmp_path):
    from airloop.serving.server import admin_token

    monkeypatch.delenv("AIRLOOP_MODEL_SERVER_TOKEN", raising=False)
    assert admin_token(None) is None
    monkeypatch.setenv("AIRLOOP_MODEL_SERVER_TOKEN", "from-env")
    assert admin_token(None) == "from-env"
    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert admin_token(str(f)) == "from-file"


# --- 2. scoring stays open but rate-bounded --------------------------------------------------------------


def test_scoring_over_the_rate_gets_429_with_retry_after_and_no_variant_failure():
    service = make_service()
    now = [0.0]
    service.bucket = TokenBucket(rate=2.0, burst=2, clock=lambda: now[0])
    client = TestClient(create_app(service))
    send = lambda: client.post("/invocations", content=records(ROW), headers={"content-type": "application/json"})  # noqa: E731
    assert [send().status_code, send().status_code] == [200, 200]
    r = send()
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "rate" in r.json()["message"]
    now[0] = 1.0  # a second later: two more tokens
    assert send().status_code == 200
    assert counter(service, "requests", "champion") == 3 and counter(service, "server_errors", "champion") == 0
    assert counter(service, "rate_limited", "none") == 1 and len(service.log.records) == 3


def test_the_rate_bound_comes_from_the_deployment_config():
    service = make_service(max_requests_per_second=5.0, burst_requests=7)
    assert service.bucket is not None and (service.bucket.rate, service.bucket.burst) == (5.0, 7)
    assert make_service(max_requests_per_second=None).bucket is None
    assert DeploymentConfig().max_rows_per_request == 1000


# --- 3. limits while streaming ----------------------------------------------------------------------------


def _asgi_post(app: Any, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """POST /invocations through the ASGI interface with a chunked body; (status, chunks the app read)."""
    pulled = [0]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        i = pulled[0]
        pulled[0] += 1
        if i < len(chunks):
            return {"type": "http.request", "body": chunks[i], "more_body": i + 1 < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/invocations",
        "raw_path": b"/invocations",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8090),
    }
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), pulled[0]


def test_a_chunked_body_is_cut_at_the_limit_without_reading_the_rest():
    service = make_service(max_request_bytes=64 * 1024)
    chunk = b" " * (16 * 1024)
    status, pulled = _asgi_post(
        create_app(service),
        [chunk] * 6400,  # 100 MiB announced by nobody
        [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
    )
    assert status == 413
    assert pulled <= 64 // 16 + 1  # the limit plus the chunk that crossed it
    assert counter(service, "client_errors", "none") == 1


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    service = make_service(max_request_bytes=1000)
    status, pulled = _asgi_post(
        create_app(service), [b"x" * 2000], [(b"content-type", b"application/json"), (b"content-length", b"2000")]
    )
    assert (status, pulled) == (413, 0)
    status, _ = _asgi_post(
        create_app(service), [b"{}"], [(b"content-type", b"application/json"), (b"content-length", b"lots")]
    )
    assert status == 400


def test_more_rows_than_the_limit_are_refused_before_scoring():
    service = make_service(max_rows_per_request=10)
    status, out = service.invoke(records(*[ROW] * 11), "application/json")
    assert_refused(service, status, out, 413, "11 rows", "limit is 10")
    csv = pd.DataFrame([ROW] * 11).to_csv(index=False).encode()
    status, out = service.invoke(csv, "text/csv")
    assert_refused(service, status, out, 413, "limit is 10")
    status, out = service.invoke(records(*[ROW] * 10), "application/json")
    assert status == 200 and len(service.log.records) == 10 and observed(service) == 10


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 50_000 + b"]" * 50_000,
        b'{"dataframe_records": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
        b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
        json.dumps({"dataframe_records": [{**ROW, "temp": json.loads("[" * 40 + "]" * 40)}]}).encode(),
    ],
)
def test_deeply_nested_json_is_a_400(body):
    service = make_service()
    status, out = service.invoke(body, "application/json")
    assert_refused(service, status, out, 400, "nest")


def test_brackets_inside_strings_do_not_count_as_nesting():
    service = make_service()
    status, out = service.invoke(records({**ROW, "note": "]" * 100 + "[" * 100}), "application/json")
    assert status == 200, out


# --- 4. inputs checked against the model's schema and suite ----------------------------------------------


@pytest.mark.parametrize(
    ("body", "column"),
    [
        (records(ROW).replace(b'"temp": 35.06', b'"temp": NaN'), "temp"),
        (records(ROW).replace(b'"temp": 35.06', b'"temp": Infinity'), "temp"),
        (records(ROW).replace(b'"temp": 35.06', b'"temp": -Infinity'), "temp"),
        (records(ROW).replace(b'"temp": 35.06', b'"temp": 1e400'), "temp"),  # overflows to inf
        (records({**ROW, "wind_gust": 1e308}), "wind_gust"),  # finite, but overflows inside the model
        (records({**ROW, "dep_time": 1e308}), "dep_time"),  # a schema column the model does not use
        (records({**ROW, "distance": 10**30}), "distance"),
    ],
)
def test_non_finite_or_overflowing_numbers_are_a_400_naming_the_column(body, column):
    service = make_service()
    status, out = service.invoke(body, "application/json")
    assert_refused(service, status, out, 400, column)


@pytest.mark.parametrize(
    ("change", "column", "words"),
    [
        ({"month": "five"}, "month", "int"),
        ({"month": 5.5}, "month", "int"),
        ({"month": True}, "month", "int"),
        ({"temp": "warm"}, "temp", "float"),
        ({"temp": [1, 2]}, "temp", "float"),
        ({"carrier": 9}, "carrier", "string"),
        ({"carrier": {"a": 1}}, "carrier", "string"),
        ({"time_hour": "yesterday"}, "time_hour", "timestamp"),
    ],
)
def test_values_of_the_wrong_type_are_a_400_naming_the_column(change, column, words):
    service = make_service()
    status, out = service.invoke(records({**ROW, **change}), "application/json")
    assert_refused(service, status, out, 400, column, words)


@pytest.mark.parametrize(
    ("change", "column", "words"),
    [
        ({"month": 99}, "month", "between 1 and 12"),
        ({"hour": -1}, "hour", "between 0 and 23"),
        ({"humid": 250.0}, "humid", "between 0 and 100"),
        ({"carrier": "ZZ"}, "carrier", "'ZZ'"),
        ({"origin": "BOS"}, "origin", "EWR"),
        ({"month": None}, "month", "null"),
    ],
)
def test_values_outside_the_suite_are_a_400_naming_the_column_and_the_rule(change, column, words):
    service = make_service()
    status, out = service.invoke(records(ROW, {**ROW, **change}), "application/json")
    assert_refused(service, status, out, 400, column, words)


def test_the_suite_checks_are_off_when_the_config_says_schema():
    service = make_service(check_inputs="schema")
    status, out = service.invoke(records({**ROW, "month": 99, "carrier": "ZZ"}), "application/json")
    assert status == 200, out
    status, out = service.invoke(records({**ROW, "month": 1.5}), "application/json")
    assert status == 400 and "month" in out["message"]  # types stay checked


def test_nullable_columns_may_be_null_and_csv_text_columns_stay_text():
    service = make_service()
    status, out = service.invoke(records({**ROW, "pressure": None, "wind_gust": None}), "application/json")
    assert status == 200, out
    csv = pd.DataFrame([{**ROW, "carrier": "9E"}]).to_csv(index=False).encode()
    status, out = service.invoke(csv, "text/csv")
    assert status == 200, out
    assert service.log.records[-1]["inputs"]["carrier"] == "9E"
    status, out = service.invoke(csv.replace(b"35.06", b"inf"), "text/csv")
    assert status == 400 and "temp" in out["message"]


def test_repeated_column_names_are_a_400():
    service = make_service()
    cols = [*ROW, "temp"]
    body = json.dumps({"dataframe_split": {"columns": cols, "data": [[*ROW.values(), 40.0]]}}).encode()
    status, out = service.invoke(body, "application/json")
    assert_refused(service, status, out, 400, "temp")


# --- 5. a non-finite prediction is a failure of its variant ------------------------------------------------


def test_a_challenger_answering_nan_fails_and_the_champion_answers():
    service = make_service(challenger=NaNModel(), weight=1.0)
    status, out = service.invoke(records(ROW, ROW), "application/json", "k")
    assert status == 200 and out["variant"] == "champion" and all(math.isfinite(p) for p in out["predictions"])
    assert counter(service, "server_errors", "challenger") == 1 and counter(service, "requests", "challenger") == 0
    assert 'airloop_server_errors_total{variant="challenger"} 1.0' in service.metrics.render()
    assert {r["variant"] for r in service.log.records} == {"champion"}


def test_a_champion_answering_nan_is_a_503_with_retry_after_never_a_success():
    service = make_service(champion=NaNModel())
    client = TestClient(create_app(service))
    r = client.post("/invocations", content=records(ROW), headers={"content-type": "application/json"})
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
    assert "champion" in r.json()["message"] and "finite" in r.json()["message"]
    assert counter(service, "server_errors", "champion") == 1 and counter(service, "requests", "champion") == 0
    assert service.log.records == [] and observed(service) == 0
    text = client.get("/metrics").text
    assert "nan" not in text.lower() and "inf " not in text.lower()


def test_a_wrong_number_of_predictions_is_a_failure_of_the_variant():
    class Short:
        def predict(self, df):
            return [0.5]

    service = make_service(challenger=Short(), weight=1.0)
    status, out = service.invoke(records(ROW, ROW), "application/json", "k")
    assert status == 200 and out["variant"] == "champion" and counter(service, "server_errors", "challenger") == 1


def test_a_prediction_log_that_cannot_be_written_is_a_503_and_nothing_is_counted():
    service = make_service(log=MemoryLog(fail=True))
    status, out = service.invoke(records(ROW), "application/json")
    assert status == 503 and "prediction log" in out["message"]
    assert observed(service) == 0 and counter(service, "requests", "champion") == 0


# --- 6. only declared columns are logged ----------------------------------------------------------------


def test_only_the_models_declared_columns_are_logged():
    service = make_service()
    status, out = service.invoke(records({**ROW, "smuggled": "secret-123", "_partition": "x"}), "application/json")
    assert status == 200, out
    (entry,) = service.log.records
    declared = dict.fromkeys([*CFG.request_columns, *CFG.deployment.outcome_key])
    assert list(entry["inputs"]) == list(declared)
    assert "secret-123" not in json.dumps(service.log.records)
    assert entry["inputs"]["wind_gust"] is None and entry["inputs"]["month"] == 1


# --- 7. X-Event-Time and X-Request-Key ------------------------------------------------------------------


@pytest.mark.parametrize(
    "when", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2013-01-01T00:00:00+99:00", "2013\x00"]
)
def test_an_event_time_that_overflows_or_is_unreadable_is_a_400(when):
    service = make_service()
    status, out = service.invoke(records(ROW), "application/json", None, when)
    assert_refused(service, status, out, 400, "X-Event-Time")


def test_request_keys_of_any_text_are_sticky_and_long_ones_are_refused():
    service = make_service(challenger=Logistic(), weight=0.5)
    status, out = service.invoke(records(ROW), "application/json", "\ud800 lone surrogate")
    assert status == 200, out
    status, out = service.invoke(records(ROW), "application/json", "k" * 10_000)
    assert status == 400 and "X-Request-Key" in out["message"]


# --- 8. the log and the histograms move by the rows of accepted requests only -------------------------------


def test_the_log_and_histograms_move_by_the_rows_of_accepted_requests():
    service = make_service()
    status, _ = service.invoke(records(*[ROW] * 100), "application/json")
    assert status == 200
    status, _ = service.invoke(records(*[ROW] * 99, {**ROW, "month": 99}), "application/json")
    assert status == 400
    assert len(service.log.records) == 100 and observed(service) == 100
    assert counter(service, "requests", "champion") == 1 and counter(service, "client_errors", "none") == 1


# --- the checks refuse nothing real ----------------------------------------------------------------------


def test_the_suite_is_read_into_per_row_rules_once():
    from airloop.serving.inputs import suite_rules

    rules = suite_rules(
        [
            {"type": "expect_column_values_to_be_between", "kwargs": {"column": "a", "min_value": 0, "max_value": 1}},
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "b", "min_value": 0, "strict_min": True},
            },
            {"type": "expect_column_values_to_be_between", "kwargs": {"column": "c", "max_value": 5, "mostly": 0.9}},
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "s", "value_set": ["x", "y"]}},
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "s"}},
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "c", "mostly": 0.5}},
            {"type": "expect_column_values_to_be_between", "kwargs": {"column": "s", "min_value": 0}},
            {"type": "expect_column_values_to_be_between", "kwargs": {"column": "zz", "min_value": 0}},
            {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
        ],
        {"a": "float", "b": "int", "c": "float", "s": "string"},
    )
    assert set(rules) == {"a", "b", "s"}  # c: only rules with mostly; zz: not declared
    assert rules["a"].range_text() == "between 0 and 1" and rules["b"].range_text() == "above 0"
    assert rules["s"].values == {"x", "y"} and rules["s"].not_null and rules["s"].low == -math.inf
    from airloop.serving.inputs import InputSchema

    schema = InputSchema.from_config(CFG)
    assert schema.rules["month"].range_text() == "between 1 and 12" and "tailnum" not in schema.rules


@pytest.mark.heavy
@pytest.mark.parametrize("model", ["flight_delays", "bikeshare"])
def test_every_real_row_of_the_feed_passes_the_checks(model):
    """Every row of the model's whole feed, sent as the replay sends it (request columns, outcome key,
    key columns; 1,000 rows a request): none is refused."""
    from airloop.serving.inputs import InputSchema
    from airloop.serving.protocol import parse_request
    from airloop.sources import bikeshare, nycflights13

    cfg = get_pipeline(model)
    rows = nycflights13.load_flights_with_weather() if model == "flight_delays" else bikeshare.frame()
    schema = InputSchema.from_config(cfg)
    columns = list(dict.fromkeys([*cfg.request_columns, *cfg.deployment.outcome_key, *cfg.data_schema.key_columns]))
    refused = []
    for start in range(0, len(rows), 1000):
        chunk = rows.iloc[start : start + 1000][columns]
        body = json.dumps(
            {"dataframe_split": json.loads(chunk.to_json(orient="split", index=False, date_format="iso"))}
        )
        try:
            schema.check(parse_request(body.encode(), "application/json", 8 << 20, 1000, schema.text_columns))
        except Exception as e:  # noqa: BLE001 (counted and shown below)
            refused.append(f"rows {start}-{start + len(chunk)}: {e}")
    assert len(rows) > 8000 and refused == [], refused[:5]
