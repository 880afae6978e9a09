"""Signature checks with the known-answer vectors both specs publish, and the payload schema."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re

import pytest

from airloop import webhooks as wh
from airloop.config import ScheduleConfig, WebhookSourceConfig

pytestmark = pytest.mark.unit

# GitHub's documented example ("Validating webhook deliveries")
GH_SECRET = "It's a Secret to Everybody"
GH_BODY = b"Hello, World!"
GH_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

# The Standard Webhooks specification's example
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TS = 1614265330
SW_BODY = b'{"test": 2432232314}'
SW_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def sw_headers(sig: str = SW_SIGNATURE, ts: int = SW_TS, msg_id: str = SW_ID) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def test_github_known_answer():
    assert wh.github_signature(GH_SECRET, GH_BODY) == GH_SIGNATURE
    d = wh.verify("github", [GH_SECRET], {"X-Hub-Signature-256": GH_SIGNATURE, "X-GitHub-Delivery": "d-1"}, GH_BODY)
    assert (d.delivery_id, d.body) == ("d-1", GH_BODY)


def test_standard_webhooks_known_answer():
    assert wh.standard_signature(SW_SECRET, SW_ID, SW_TS, SW_BODY) == SW_SIGNATURE
    d = wh.verify("standard", [SW_SECRET], sw_headers(), SW_BODY, now=SW_TS + 10)
    assert (d.delivery_id, d.timestamp) == (SW_ID, SW_TS)


@pytest.mark.parametrize(
    ("headers", "body", "why"),
    [
        ({"X-Hub-Signature-256": GH_SIGNATURE, "X-GitHub-Delivery": "d"}, b"Hello, World?", "does not match"),
        ({"X-Hub-Signature-256": GH_SIGNATURE.upper(), "X-GitHub-Delivery": "d"}, GH_BODY, "sha256="),
        ({"X-GitHub-Delivery": "d"}, GH_BODY, "missing header X-Hub-Signature-256"),
    ],
)
def test_github_rejects(headers, body, why):
    with pytest.raises(wh.SignatureRejected, match=why) as e:
        wh.verify("github", [GH_SECRET], headers, body)
    assert e.value.status == 401


def test_header_names_are_case_insensitive():
    assert wh.verify("github", [GH_SECRET], {"x-hub-signature-256": GH_SIGNATURE, "x-github-delivery": "a"}, GH_BODY)
    assert wh.verify("standard", [SW_SECRET], {k.upper(): v for k, v in sw_headers().items()}, SW_BODY, now=SW_TS)


def test_standard_rejects_tampered_body_and_wrong_secret():
    with pytest.raises(wh.SignatureRejected, match="no webhook-signature matches"):
        wh.verify("standard", [SW_SECRET], sw_headers(), b'{"test": 2432232315}', now=SW_TS)
    with pytest.raises(wh.SignatureRejected):
        wh.verify("standard", ["whsec_" + "QUJD" * 8], sw_headers(), SW_BODY, now=SW_TS)


@pytest.mark.parametrize(("offset", "word"), [(-301, "old"), (301, "ahead")])
def test_standard_rejects_timestamps_outside_five_minutes(offset, word):
    with pytest.raises(wh.SignatureRejected, match=f"301 s {word}"):
        wh.verify("standard", [SW_SECRET], sw_headers(), SW_BODY, now=SW_TS - offset)
    # the edges are accepted
    assert wh.verify("standard", [SW_SECRET], sw_headers(), SW_BODY, now=SW_TS + (300 if offset < 0 else -300))


def test_standard_accepts_any_of_several_signatures_and_secrets():
    # the sender signs with old and new secret during a rotation; we may know either one
    other = "whsec_" + "S2V5Um90YXRpb24xMjM0NTY3OA=="
    both = f"v1,bm90IGEgc2lnbmF0dXJl {SW_SIGNATURE} v1a,ignored"
    assert wh.verify("standard", [SW_SECRET], sw_headers(both), SW_BODY, now=SW_TS)
    assert wh.verify("standard", [other, SW_SECRET], sw_headers(), SW_BODY, now=SW_TS)
    with pytest.raises(wh.SignatureRejected, match="no v1 signature"):
        wh.verify("standard", [SW_SECRET], sw_headers("v1a,abc"), SW_BODY, now=SW_TS)


def test_missing_and_bad_headers_are_named():
    with pytest.raises(wh.SignatureRejected, match="missing header webhook-timestamp, webhook-signature"):
        wh.verify("standard", [SW_SECRET], {"webhook-id": SW_ID}, SW_BODY, now=SW_TS)
    with pytest.raises(wh.SignatureRejected, match="Unix seconds"):
        wh.verify("standard", [SW_SECRET], sw_headers(ts="soon"), SW_BODY, now=SW_TS)  # type: ignore[arg-type]
    with pytest.raises(wh.SignatureRejected, match="no secret"):
        wh.verify("standard", [], sw_headers(), SW_BODY, now=SW_TS)
    # a valid signature over an id that cannot become a run id is refused, naming the header
    bad_id = "msg/../x"
    sig = wh.standard_signature(SW_SECRET, bad_id, SW_TS, SW_BODY)
    with pytest.raises(wh.PayloadRejected, match="header webhook-id") as e:
        wh.verify("standard", [SW_SECRET], sw_headers(sig, msg_id=bad_id), SW_BODY, now=SW_TS)
    assert e.value.status == 400


def test_batch_landed_payload():
    ok = wh.parse_payload(
        "batch_landed", json.dumps({"source_uri": "s3://landing/x.csv", "day": "2013-07-15", "rows": 3}).encode()
    )
    assert (ok.source_uri, ok.day.isoformat(), ok.rows) == ("s3://landing/x.csv", "2013-07-15", 3)


@pytest.mark.parametrize(
    ("body", "field", "msg"),
    [
        (b"not json", "", "not JSON"),
        (b"[1, 2]", "", "JSON object"),
        (b'{"day": "2013-07-15"}', "source_uri", "source_uri: Field required"),
        (b'{"source_uri": "/l/x.csv", "day": "2013-13-01"}', "day", "day: "),
        (b'{"source_uri": "landing/x.csv", "day": "2013-07-15"}', "source_uri", "absolute path"),
        (b'{"source_uri": "/l/../etc/passwd", "day": "2013-07-15"}', "source_uri", "'..'"),
        (b'{"source_uri": "/l/x.csv", "day": "2013-07-15", "rows": -1}', "rows", "rows: "),
        (
            b'{"source_uri": "/l/x.csv", "day": "2013-07-15", "sourceuri": "/x"}',
            "sourceuri",
            "sourceuri: unknown field",
        ),
    ],
)
def test_bad_payloads_name_the_field(body, field, msg):
    with pytest.raises(wh.PayloadRejected, match=msg) as e:
        wh.parse_payload("batch_landed", body)
    assert e.value.field == field and e.value.status == 400


def test_source_uri_must_lie_under_an_allowed_prefix():
    wh.check_uri_allowed("/data/landing/m/ds=2013-01-01/flights.csv", ["/data/landing/m"])
    wh.check_uri_allowed("file:///data/landing/m/x.csv", ["/data/landing/m/"])
    with pytest.raises(wh.PayloadRejected, match="source_uri: must lie under"):
        wh.check_uri_allowed("/data/landing/m2/x.csv", ["/data/landing/m"])


def test_run_id_is_a_function_of_the_delivery():
    assert wh.run_id_for("src", "msg_1") == wh.run_id_for("src", "msg_1") == "webhook__src__msg_1"


# -- hardening (issue 15): every bad input is a WebhookRejected, never another exception -------------
def _landed(**fields) -> bytes:
    return json.dumps({"source_uri": "/l/x.csv", "day": "2013-07-15", **fields}).encode()


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 50_000 + b"]" * 50_000,  # Python's json module recurses: RecursionError, once a 500
        b'{"a": ' * 20_000 + b"1" + b"}" * 20_000,
        b'{"source_uri": "/l/x.csv", "day": "2013-07-15", "rows": ' + b"[" * 40 + b"]" * 40 + b"}",
    ],
)
def test_deeply_nested_json_is_a_400(body):
    with pytest.raises(wh.PayloadRejected, match="nested deeper than") as e:
        wh.parse_payload("batch_landed", body)
    assert e.value.status == 400


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"source_uri": "/l/x.csv", "day": "2013-07-15", "rows": 1' + b"0" * 5000 + b"}", ""),  # int too long
        (_landed(rows=2**64), "rows"),  # more rows than any file holds
        (_landed(day=1373846400), "day"),  # a Unix timestamp is not a day
        (_landed(day="2013-07-15T00:00:00"), "day"),
    ],
)
def test_numbers_and_days_out_of_shape_are_400(body, field):
    with pytest.raises(wh.PayloadRejected) as e:
        wh.parse_payload("batch_landed", body)
    assert e.value.field == field and e.value.status == 400


@pytest.mark.parametrize("ts", ["9" * 400, "1" + "0" * 30, "+1614265330", " 1614265330", "1_614_265_330", "-5"])
def test_timestamps_that_are_not_plain_unix_seconds_are_401(ts):
    with pytest.raises(wh.SignatureRejected, match="Unix seconds"):
        wh.verify("standard", [SW_SECRET], {**sw_headers(), "webhook-timestamp": ts}, SW_BODY, now=SW_TS)


@pytest.mark.parametrize("delivery_id", ["d-1\n", "x" * 100 + "\n"])
def test_delivery_ids_are_checked_whole(delivery_id):
    """A trailing newline once passed the check (``$`` matches before it) and reached the run id."""
    headers = {"X-Hub-Signature-256": GH_SIGNATURE, "X-GitHub-Delivery": delivery_id}
    with pytest.raises(wh.PayloadRejected, match="X-GitHub-Delivery"):
        wh.verify("github", [GH_SECRET], headers, GH_BODY)


def test_source_uri_rules_are_named(tmp_path):
    landing = tmp_path / "landing" / "m"
    (landing / "ds=2013-07-15").mkdir(parents=True)
    (landing / "ds=2013-07-15" / "batch.csv").symlink_to("/etc/passwd")
    prefixes, local = [str(landing)], ["file"]
    wh.check_uri_allowed(f"{landing}/ds=2013-07-16/batch.csv", prefixes, local)  # not landed yet: fine
    for uri, rule in [
        (f"{landing}/ds=2013-07-15/batch.csv", "outside"),  # a symlink: resolved before the check
        (f"{landing}/%2e%2e/%2e%2e/etc/passwd", "percent-escape"),
        (f"file://{landing}/x.csv::http://127.0.0.1:1/", "chain"),
        (f"simplecache::file://{landing}/ds=2013-07-15/batch.csv", "chain"),
        (f"{landing}/ds=2013-07-15/batch.csv\x00.txt", "NUL"),
        ("http://127.0.0.1:1/etc/passwd", "protocol 'http'"),
        (f"s3://bucket{landing}/x.csv", "protocol 's3'"),
    ]:
        with pytest.raises(wh.PayloadRejected, match=re.escape(rule)) as e:
            wh.check_uri_allowed(uri, prefixes, local)
        assert e.value.field == "source_uri" and e.value.message.startswith("source_uri: "), uri
    # another protocol where the source is configured for it
    wh.check_uri_allowed("s3://bucket/feeds/m/x.csv", ["s3://bucket/feeds/m"], ["file", "s3"])


DAILY = ScheduleConfig(cron="@daily", start_date=dt.date(2013, 1, 1), end_date=dt.date(2013, 12, 31))
NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def _utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def test_a_day_is_the_interval_its_schedule_starts_on_it():
    assert wh.day_interval(dt.date(2013, 7, 15), DAILY, now=NOW) == (_utc(2013, 7, 15), _utc(2013, 7, 16))
    assert wh.day_interval(dt.date(2013, 1, 1), DAILY, now=NOW)[0] == _utc(2013, 1, 1)
    assert wh.day_interval(dt.date(2013, 12, 31), DAILY, now=NOW)[0] == _utc(2013, 12, 31)
    six = DAILY.model_copy(update={"cron": "0 6 * * *"})
    assert wh.day_interval(dt.date(2013, 7, 15), six, now=NOW) == (_utc(2013, 7, 15, 6), _utc(2013, 7, 16, 6))
    # in the schedule's time zone: Paris midnight is 22:00 UTC in summer
    paris = DAILY.model_copy(update={"timezone": "Europe/Paris"})
    assert wh.day_interval(dt.date(2013, 7, 15), paris, now=NOW) == (_utc(2013, 7, 14, 22), _utc(2013, 7, 15, 22))
    weekly = DAILY.model_copy(update={"cron": "@weekly"})  # Sundays
    assert wh.day_interval(dt.date(2013, 7, 14), weekly, now=NOW) == (_utc(2013, 7, 14), _utc(2013, 7, 21))


@pytest.mark.parametrize(
    ("day", "schedule", "why"),
    [
        (dt.date(2012, 12, 31), DAILY, "2013-01-01 to 2013-12-31"),
        (dt.date(2014, 1, 1), DAILY, "2013-01-01 to 2013-12-31"),
        (dt.date(1, 1, 1), DAILY, "2013-01-01 to 2013-12-31"),
        (dt.date(9999, 12, 31), DAILY, "2013-01-01 to 2013-12-31"),
        (dt.date(9999, 12, 31), DAILY.model_copy(update={"end_date": None}), "2013-01-01 to 2024-01-01"),
        (dt.date(2024, 1, 2), DAILY.model_copy(update={"end_date": None}), "2013-01-01 to 2024-01-01"),
        (dt.date(2013, 12, 31), DAILY.model_copy(update={"cron": "0 6 * * *"}), "2013-01-01 to 2013-12-30"),
        (dt.date(2013, 7, 15), DAILY.model_copy(update={"cron": "@weekly"}), "not a day on which"),
        (dt.date(2013, 7, 15), DAILY.model_copy(update={"cron": "@hourly"}), "more than once a day"),
    ],
)
def test_days_outside_the_schedule_are_400_with_the_allowed_range(day, schedule, why):
    with pytest.raises(wh.PayloadRejected, match=re.escape(why)) as e:
        wh.day_interval(day, schedule, now=NOW)
    assert e.value.field == "day" and e.value.status == 400 and e.value.message.startswith("day: ")


def test_check_delivery_runs_every_check_and_hashes_the_signed_body(tmp_path):
    source = WebhookSourceConfig(name="s", scheme="github", connection_id="c")
    body = json.dumps({"source_uri": f"{tmp_path}/m/x.csv", "day": "2013-07-15", "rows": 3, "sha256": "a" * 64})
    headers = wh.signed_headers("github", GH_SECRET, "d-1", body.encode())
    ok = wh.check_delivery(
        source, DAILY, [GH_SECRET], headers, body.encode(), prefixes=[f"{tmp_path}/m"], protocols=["file"]
    )
    assert ok.delivery.delivery_id == "d-1" and ok.payload.rows == 3 and ok.payload.sha256 == "a" * 64
    assert ok.interval == (_utc(2013, 7, 15), _utc(2013, 7, 16))
    assert ok.body_sha256 == hashlib.sha256(body.encode()).hexdigest()
    late = body.replace("2013-07-15", "2014-07-15").encode()
    with pytest.raises(wh.PayloadRejected, match="day: "):
        wh.check_delivery(
            source,
            DAILY,
            [GH_SECRET],
            wh.signed_headers("github", GH_SECRET, "d-2", late),
            late,
            prefixes=[f"{tmp_path}/m"],
            protocols=["file"],
        )


@pytest.mark.parametrize(
    ("prefix", "why"),
    [
        ("landing/m", "absolute"),
        ("/data/landing/../m", "'..'"),
        ("simplecache::s3://bucket/m", "chain"),
        ("/data/%2e%2e/m", "percent-escape"),
    ],
)
def test_allowed_prefixes_are_checked_when_the_config_loads(prefix, why):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape(why)):
        WebhookSourceConfig(name="s", scheme="standard", connection_id="c", allowed_prefixes=(prefix,))
