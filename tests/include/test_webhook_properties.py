"""Property tests of the webhook checks: whatever a sender (or an attacker) sends, the answer is a 2xx or a
4xx with a reason, never an exception the route would turn into a 500.

Domain level: ``airloop.webhooks`` raises only ``WebhookRejected`` for arbitrary bodies, header sets
(signature-like garbage, huge timestamps, unicode) and payloads (deep nesting, huge integers, odd
``source_uri`` strings). Route level: the FastAPI router on a bare app, with the two functions that need
Airflow's metadata database (the connection lookup, the run creation) replaced by fakes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from airloop import webhooks as wh
from airloop.config import ScheduleConfig, WebhookSourceConfig

pytestmark = pytest.mark.unit

SECRET = "whsec_" + "cHJvcGVydHktdGVzdC1zZWNyZXQh"
NOW = 1_700_000_000.0
DAILY = ScheduleConfig(cron="@daily", start_date=dt.date(2013, 1, 1), end_date=dt.date(2013, 12, 31))
PREFIX = "/srv/airloop-property/landing/m"
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_HEADER_NAMES = st.sampled_from(
    [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "X-Hub-Signature-256",
        "X-GitHub-Delivery",
        "Content-Type",
        "x-other",
    ]
)
_HEADER_VALUES = st.one_of(
    st.text(max_size=60),
    st.integers().map(str),
    st.integers(min_value=0, max_value=10**500).map(str),  # timestamps that overflow a float
    st.from_regex(r"\Av1,[A-Za-z0-9+/=]{0,50}( v1,[A-Za-z0-9+/=]{0,50})*\Z"),  # signature-like garbage
    st.from_regex(r"\Asha256=[0-9a-f]{0,70}\Z"),
)
_HEADERS = st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=6)

_JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=30,
)
_ODD_URIS = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            f"{PREFIX}/ds=2013-07-15/x.csv",
            f"file://{PREFIX}/ds=2013-07-15/x.csv",
            f"{PREFIX}/%2e%2e/%2e%2e/etc/passwd",
            f"{PREFIX}/../../etc/passwd",
            f"simplecache::file://{PREFIX}/x.csv",
            f"file://{PREFIX}/x.csv::http://127.0.0.1:1/",
            f"{PREFIX}/x.csv\x00.txt",
            "http://127.0.0.1:1/etc/passwd",
            "s3://bucket/landing/m/x.csv",
            "/etc/passwd",
            "",
        ]
    ),
    st.builds(lambda tail: f"{PREFIX}/{tail}", st.text(max_size=40)),
)
_DAYS = st.one_of(
    st.dates().map(str),
    st.dates(min_value=dt.date(2012, 12, 25), max_value=dt.date(2014, 1, 5)).map(str),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.text(max_size=12),
    st.none(),
)
_ROWS = st.one_of(st.none(), st.integers(min_value=-(10**40), max_value=10**40), st.text(max_size=5), st.floats())
_PAYLOADS = st.fixed_dictionaries(
    {"source_uri": _ODD_URIS, "day": _DAYS},
    optional={"rows": _ROWS, "sha256": st.text(alphabet="0123456789abcdef", max_size=70), "extra": _JSON},
)


def _deep(n: int, open_: bytes, close: bytes) -> bytes:
    return open_ * n + b"1" + close * n


_IN_2013 = st.dates(min_value=dt.date(2013, 1, 1), max_value=dt.date(2013, 12, 31))
#: deliveries that should pass: a file under the prefix, a day of the schedule
_PLAUSIBLE = st.fixed_dictionaries(
    {"source_uri": st.builds(lambda d: f"{PREFIX}/ds={d}/x.csv", _IN_2013), "day": _IN_2013.map(str)},
    optional={"rows": st.integers(min_value=0, max_value=10**7), "sha256": st.just("ab" * 32)},
)


_BODIES = st.one_of(
    _PLAUSIBLE.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    _JSON.map(lambda v: json.dumps(v).encode()),
    _PAYLOADS.map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=1, max_value=60_000).map(lambda n: _deep(n, b"[", b"]")),
    st.integers(min_value=1, max_value=30_000).map(lambda n: _deep(n, b'{"a":', b"}")),
    st.integers(min_value=1, max_value=6000).map(
        lambda n: b'{"source_uri": "/x", "day": "2013-01-01", "rows": 1' + b"0" * n + b"}"
    ),
)
#: delivery ids: mostly valid ones (so the checks after the id run), and any text
_IDS = st.from_regex(r"\A[A-Za-z0-9_.:+~-]{1,20}\Z") | st.text(max_size=110)
_SOURCES = st.sampled_from(
    [
        WebhookSourceConfig(name="std", scheme="standard", connection_id="c"),
        WebhookSourceConfig(name="gh", scheme="github", connection_id="c"),
    ]
)


def _check(source: WebhookSourceConfig, headers: dict[str, str], body: bytes) -> wh.AcceptedDelivery | None:
    """check_delivery, where only WebhookRejected may come out (a 401 or 400)."""
    try:
        return wh.check_delivery(source, DAILY, [SECRET], headers, body, prefixes=[PREFIX], protocols=["file"], now=NOW)
    except wh.WebhookRejected as e:
        assert 400 <= e.status < 500 and e.message
        return None


@FAST
@given(source=_SOURCES, headers=_HEADERS, body=_BODIES)
def test_property_unsigned_garbage_is_only_ever_rejected(source, headers, body):
    assert _check(source, headers, body) is None  # nothing unsigned passes


@FAST
@given(source=_SOURCES, body=_BODIES, delivery_id=_IDS, extra=_HEADERS)
def test_property_signed_bodies_are_accepted_or_rejected_with_a_reason(source, body, delivery_id, extra):
    """Signed with the right secret, so every check past the signature runs on the arbitrary body."""
    headers = {**extra, **wh.signed_headers(source.scheme, SECRET, delivery_id, body, int(NOW))}
    accepted = _check(source, headers, body)
    event("accepted" if accepted else "refused")
    if accepted is not None:  # what passes is what the checks promise
        start, end = accepted.interval
        assert dt.datetime(2013, 1, 1, tzinfo=dt.UTC) <= start <= dt.datetime(2013, 12, 31, tzinfo=dt.UTC)
        assert end - start == dt.timedelta(days=1) and start.date() == accepted.payload.day
        assert Path(os.path.realpath(accepted.payload.source_uri.removeprefix("file://"))).is_relative_to(PREFIX)
        assert wh.DELIVERY_ID.fullmatch(accepted.delivery.delivery_id)


@FAST
@given(body=_BODIES)
def test_property_any_body_parses_or_is_400(body):
    try:
        assert isinstance(wh.parse_payload("batch_landed", body), wh.BatchLanded)
    except wh.PayloadRejected as e:
        assert e.status == 400 and e.message


@FAST
@given(payload=_PAYLOADS)
def test_property_payloads_parse_or_name_the_field(payload):
    try:
        parsed = wh.parse_payload("batch_landed", json.dumps(payload).encode())
    except wh.PayloadRejected as e:
        assert e.status == 400 and e.message
        return
    assert isinstance(parsed, wh.BatchLanded) and parsed.day.isoformat() == payload["day"]


@FAST
@given(
    start=st.dates(min_value=dt.date(1, 1, 2), max_value=dt.date(9999, 12, 30)),
    offset=st.one_of(st.integers(min_value=-3, max_value=400), st.dates()),
    cron=st.sampled_from(["@daily", "0 6 * * *", "@weekly", "@monthly", "@hourly", "30 23 * * 1-5"]),
    tz=st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]),
    span=st.one_of(st.none(), st.integers(min_value=0, max_value=4000)),
)
def test_property_a_day_names_one_interval_of_the_schedule_or_is_400(start, offset, cron, tz, span):
    """A day near the start date (or any date): one interval of the schedule, inside its dates, or a 400."""
    try:
        day = offset if isinstance(offset, dt.date) else start + dt.timedelta(days=offset)
        end = None if span is None else start + dt.timedelta(days=span)
    except OverflowError:
        return
    schedule = ScheduleConfig(cron=cron, timezone=tz, start_date=start, end_date=end)
    now = dt.datetime.fromtimestamp(NOW, dt.UTC)
    try:
        first, nxt = wh.day_interval(day, schedule, now=now)
    except wh.PayloadRejected as e:
        assert e.field == "day" and e.message.startswith("day: ")
        event("day refused")
        return
    event("day accepted")
    lo = dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC)
    assert lo <= first < nxt and first <= now and cron != "@hourly"
    assert first.astimezone(ZoneInfo(tz)).date() == day  # the interval starts on the day named
    if end is not None:
        assert first <= dt.datetime(end.year, end.month, end.day, tzinfo=dt.UTC)


# -- the route ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def route():
    """The webhook router on a bare app; connection lookup and run creation faked (no metadata database)."""
    import airloop_webhook_routes as routes

    created: list[tuple] = []

    def fake_create_run(dag_id, run_id, interval, conf, source):
        created.append((dag_id, run_id, interval, conf))
        return routes.RunFound(run_id, "queued", True)

    mp = pytest.MonkeyPatch()
    mp.setattr(routes, "_secrets", lambda source: [SECRET])
    mp.setattr(routes, "create_run", fake_create_run)
    mp.setattr(routes, "_ui_url", lambda dag_id, run_id: f"http://ui/{dag_id}/{run_id}")
    mp.setattr(routes, "_confinement", lambda cfg, source: ((PREFIX,), ("file",)))
    app = FastAPI()
    app.include_router(routes.router)
    yield TestClient(app, raise_server_exceptions=False), created
    mp.undo()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    name=st.sampled_from(["flight-delays-landing", "flight-delays-github"]),
    body=_BODIES,
    headers=_HEADERS,
    sign=st.booleans(),
    delivery_id=_IDS,
)
def test_property_the_route_answers_2xx_or_4xx(route, name, body, headers, sign, delivery_id):
    client, created = route
    from airloop.config import find_webhook_source

    _, source = find_webhook_source(name)
    if sign:
        headers = {**headers, **wh.signed_headers(source.scheme, SECRET, delivery_id, body, int(time.time()))}
    headers = {k: v.encode("utf-8", "surrogatepass").decode("latin-1") for k, v in headers.items()}
    before = len(created)
    try:
        r = client.post(f"/webhooks/{name}", content=body, headers=headers)
    except UnicodeEncodeError:  # a header httpx cannot send is not a request the route ever sees
        return
    event(f"status {r.status_code}")
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert r.json().get("detail") or r.status_code < 300
    assert (len(created) > before) == (r.status_code == 202)  # only an accepted delivery makes a run
    if r.status_code >= 400 and r.status_code != 413:
        assert r.status_code in (400, 401, 409), r.text[:300]
