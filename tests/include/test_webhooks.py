"""Signature checks with the known-answer vectors both specs publish, and the payload schema."""

from __future__ import annotations

import json

import pytest

from airloop import webhooks as wh

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
