"""Property tests of the scoring protocol (issue 15): whatever a client sends, the answer is a 2xx, a 4xx
with a message, or the stated transient 503 (no variant could answer, with ``Retry-After``); never another
5xx. A non-2xx never adds a prediction-log line or a histogram observation; a 2xx adds one of each per row.

In process (``ModelService.invoke`` and Starlette's ``TestClient`` on ``create_app``), with stub models
over the real ``flight_delays`` schema and suite; no socket, no training.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from airloop.config import get_pipeline
from airloop.serving.server import ModelService, Variant, create_app

pytestmark = pytest.mark.unit

CFG = get_pipeline("flight_delays")
ROW: dict[str, Any] = {
    "year": 2013,
    "month": 1,
    "day": 7,
    "sched_arr_time": 648,
    "carrier": "US",
    "flight": 1117,
    "origin": "EWR",
    "dest": "CLT",
    "distance": 529,
    "hour": 5,
    "minute": 0,
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
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class SumModel:
    """A stub whose output follows its inputs: the sum of the numeric inputs, squashed (a huge input makes
    inf - inf = NaN, as a real model would)."""

    def predict(self, df: pd.DataFrame) -> pd.DataFrame:
        num = df.select_dtypes("number").to_numpy(dtype=float)
        with np.errstate(all="ignore"):
            s = np.nansum(num * 1e300, axis=1) - np.nansum(num * 1e300, axis=1)
        return pd.DataFrame({"prediction": 1.0 / (1.0 + np.exp(-s))})


class Flaky:
    """A challenger that fails in every way a model can: raises, answers NaN, answers too few rows."""

    def __init__(self) -> None:
        self.n = 0

    def predict(self, df: pd.DataFrame) -> Any:
        self.n += 1
        if self.n % 3 == 0:
            raise RuntimeError("CUDA error")
        if self.n % 3 == 1:
            return [float("nan")] * len(df)
        return [0.5]


class MemoryLog:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, records: list[dict[str, Any]]) -> None:
        self.records.extend(records)


def make_service() -> ModelService:
    dep = CFG.deployment.model_copy(update={"max_rows_per_request": 50, "max_request_bytes": 256 * 1024})
    return ModelService(
        "flight_delays",
        Variant("champion", "1", SumModel()),
        Variant("challenger", "2", Flaky()),
        0.5,
        MemoryLog(),
        seed=3,
        deployment=dep,
    )


SERVICE = make_service()
CLIENT = TestClient(create_app(SERVICE, admin_token="secret"))


def figures(service: ModelService) -> tuple[int, float, float]:
    """(log lines, prediction observations, sum of predictions)."""
    hists = [h for (name, _), h in service.metrics.hist.items() if name == "prediction"]
    return len(service.log.records), sum(h[-1] for h in hists), sum(h[-2] for h in hists)


def check(before: tuple[int, float, float], status: int, payload: dict[str, Any], retry_after: Any = "") -> None:
    after = figures(SERVICE)
    assert status in range(200, 300) or status in range(400, 500) or status == 503, (status, payload)
    assert isinstance(payload.get("message", ""), str)
    if status == 200:
        n = len(payload["predictions"])
        assert n >= 1 and all(math.isfinite(p) for p in payload["predictions"])
        assert after[0] == before[0] + n and after[1] == before[1] + n
    else:
        assert payload["message"], payload
        assert after[:2] == before[:2], (status, payload)
    if status == 503:
        assert retry_after is None or int(retry_after) >= 1
    assert math.isfinite(after[2])


# --- strategies ---------------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([1e308, -1e308, 1.7976931348623157e308, 2**63, 2**64, -(2**63) - 1, 10**400, 5e-324])
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)
columns = st.sampled_from([*ROW, "dep_time", "time_hour", "smuggled", ""])


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A real row, some of its values replaced (any JSON value), columns dropped or added, in any format."""
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        row = dict(ROW)
        for col in draw(st.lists(columns, max_size=3)):
            if draw(st.booleans()) and col in row:
                del row[col]
            else:
                row[col] = draw(json_values)
        rows.append(row)
    fmt = draw(st.sampled_from(["dataframe_records", "instances", "dataframe_split", "inputs"]))
    if fmt in ("dataframe_records", "instances"):
        doc: Any = {fmt: rows}
    elif fmt == "dataframe_split":
        cols = list(dict.fromkeys(c for r in rows for c in r))
        doc = {fmt: {"columns": cols, "data": [[r.get(c) for c in cols] for r in rows]}}
    else:
        cols = list(dict.fromkeys(c for r in rows for c in r))
        doc = {fmt: {c: [r.get(c) for r in rows] for c in cols}}
    return json.dumps(doc, allow_nan=True).encode()


def nested(draw_depth: int, open_: bytes, close: bytes, inner: bytes = b"1") -> bytes:
    return open_ * draw_depth + inner + close * draw_depth


deep = st.builds(
    nested,
    st.integers(1, 60_000),
    st.sampled_from([b"[", b'{"a":', b'{"dataframe_records":[{"temp":']),
    st.sampled_from([b"]", b"}", b"}]}"]),
)
csv_bodies = st.builds(
    lambda header, lines: (header + "\n" + "\n".join(lines)).encode("utf-8", "surrogatepass"),
    st.sampled_from([",".join(ROW), ",".join(ROW) + ",extra", "a,b", "", ",,,"]),
    st.lists(st.text(max_size=60), max_size=6),
)
bodies = (
    near_valid()
    | st.builds(lambda v: json.dumps(v, allow_nan=True).encode(), json_values)
    | deep
    | csv_bodies
    | st.binary(max_size=300)
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/csv", "TEXT/CSV", "", "text/plain", "a/b;;;"]
)
event_times = (
    st.none()
    | st.text(max_size=40)
    | st.sampled_from(
        [
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+23:59",
            "2013-01-07T10:00:00Z",
            "2013-01-07T10:00:00+99:99",
            "2013-02-30T00:00:00",
            "99999-01-01",
        ]
    )
    | st.datetimes().map(lambda d: d.isoformat())
)
request_keys = st.none() | st.text(max_size=300)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


# --- properties -----------------------------------------------------------------------------------------


@SETTINGS
@given(body=bodies, ctype=content_types, when=event_times, key=request_keys)
def test_any_request_is_answered_2xx_4xx_or_503_and_only_a_2xx_is_logged(body, ctype, when, key):
    before = figures(SERVICE)
    status, payload = SERVICE.invoke(body, ctype, key, when)
    check(before, status, payload)


@SETTINGS
@given(body=bodies, ctype=content_types, when=st.none() | header_text, key=st.none() | header_text)
def test_any_http_request_is_answered_2xx_4xx_or_503_and_only_a_2xx_is_logged(body, ctype, when, key):
    headers = {"content-type": ctype}
    if when is not None:
        headers["x-event-time"] = when
    if key is not None:
        headers["x-request-key"] = key
    before = figures(SERVICE)
    r = CLIENT.post("/invocations", content=body, headers=headers)
    check(before, r.status_code, r.json(), r.headers.get("retry-after"))


@SETTINGS
@given(
    body=st.binary(max_size=200) | st.builds(lambda v: json.dumps(v, allow_nan=True).encode(), json_values) | deep,
    auth=st.none() | header_text,
)
def test_the_admin_routes_answer_any_body_with_a_4xx_unless_the_token_is_right(body, auth):
    headers = {"content-type": "application/json"}
    if auth is not None:
        headers["authorization"] = auth
    weight = SERVICE.weight
    r = CLIENT.put("/admin/weight", content=body, headers=headers)
    assert r.status_code in (200, 400, 401, 413), r.text
    if r.status_code != 200:
        assert SERVICE.weight == weight
    r = CLIENT.put("/admin/weight", content=body, headers={**headers, "authorization": "Bearer secret"})
    assert r.status_code in (200, 400, 413), r.text
    SERVICE.set_weight(0.5)
