"""Webhook deliveries: signature checks, payload schemas and the checks of what a delivery may ask for,
free of Airflow and of any web framework.

Two signature schemes, both checked on the raw body, in constant time, before the body is parsed:

* ``github``: header ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``; the delivery id is
  ``X-GitHub-Delivery``. Neither the id nor a time is signed: a captured body can be sent again under
  any id, so deliveries are also deduplicated by the SHA-256 of the signed body (see below).
* ``standard`` (Standard Webhooks): ``webhook-id``, ``webhook-timestamp`` (Unix seconds, at most
  ``tolerance_s`` old or ahead) and ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256 of
  "<id>.<timestamp>.<body>">`` entries; any one valid signature passes (key rotation). Secrets may be given
  as ``whsec_<base64>`` (the spec's form) or as plain text. The recommended scheme.

Several secrets may be configured for one source (rotation): a delivery signed with any of them passes.

:func:`check_delivery` is the whole check of one delivery, in this order, raising :class:`WebhookRejected`
(a 4xx with the reason) at the first that fails: signature (401), payload schema (400: not JSON, nested
deeper than :data:`MAX_JSON_DEPTH`, a bad field), ``source_uri`` confined to the source's prefixes and
protocols (400, :mod:`airloop.confine`), ``day`` a day on which the model's schedule starts a data
interval, between its start and end dates and not in the future (400 with the allowed range).

The plugin (``plugins/airloop_webhook_routes.py``) maps a verified, valid delivery to a DAG run whose run
id is made from the delivery id, so a repeated delivery finds its run instead of creating another; the
run's conf records :func:`body_sha256`, so the same body under another id finds that run too.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from airloop.config import ScheduleConfig, WebhookSourceConfig

#: what a delivery id may contain (it becomes part of an Airflow run id); matched whole (fullmatch)
DELIVERY_ID = re.compile(r"[A-Za-z0-9_.:+~-]{1,100}")
#: a webhook-timestamp: plain Unix seconds (int() alone would take " 12", "+12", "1_2" and 400 digits)
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")
#: how deeply a payload may nest; a batch_landed payload is one flat object. Deeper bodies are refused
#: before they are parsed (Python's json module recurses, and fails deep inside with RecursionError)
MAX_JSON_DEPTH = 16
#: the most rows a batch may announce (what a 64-bit row count holds)
MAX_ROWS = 2**63 - 1
#: how far a timestamp may be off when no source config says otherwise (its default)
DEFAULT_TOLERANCE_S: int = WebhookSourceConfig.model_fields["tolerance_seconds"].default


class WebhookRejected(Exception):
    """A delivery that is refused; ``status`` is the HTTP status to answer with, the message says why."""

    status = 400
    field = ""  # the payload field at fault, when one is

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class SignatureRejected(WebhookRejected):
    status = 401


class PayloadRejected(WebhookRejected):
    """The body is not valid JSON or not valid for the source's schema; ``field`` names the bad field."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Delivery:
    """A verified delivery: its id (from the sender) and its raw body."""

    delivery_id: str
    body: bytes
    timestamp: int | None = None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lower = name.lower()
    for k, v in headers.items():
        if k.lower() == lower:
            return v
    return None


def _bytes(text: str) -> bytes:
    """A header's text as bytes, whatever it holds (a lone surrogate included), for a constant-time compare."""
    return text.encode("utf-8", "surrogatepass")


def _delivery_id(value: str | None, header: str) -> str:
    if not value:
        raise PayloadRejected(f"missing header {header}: every delivery needs an id", field=header)
    if not DELIVERY_ID.fullmatch(value):
        raise PayloadRejected(f"header {header}: use 1-100 of A-Z a-z 0-9 _ . : + ~ -", field=header)
    return value


def secret_key(secret: str) -> bytes:
    """The HMAC key of a configured secret: ``whsec_<base64>`` decoded, anything else as UTF-8."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error as e:
            raise ValueError("a whsec_ secret must be base64 after the prefix") from e
    return secret.encode()


def github_signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret_key(secret), body, hashlib.sha256).hexdigest()


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``webhook-signature`` entry (``v1,<base64>``) of the Standard Webhooks spec."""
    signed = _bytes(f"{msg_id}.{timestamp}.") + body
    return "v1," + base64.b64encode(hmac.new(secret_key(secret), signed, hashlib.sha256).digest()).decode()


def signed_headers(
    scheme: Literal["github", "standard"], secret: str, delivery_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The headers a sender adds to ``body`` (what upstream systems, the CLI and the tests send)."""
    if scheme == "github":
        return {"X-Hub-Signature-256": github_signature(secret, body), "X-GitHub-Delivery": delivery_id}
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": standard_signature(secret, delivery_id, ts, body),
    }


def verify_github(secrets: Sequence[str], headers: Mapping[str, str], body: bytes) -> Delivery:
    """Check ``X-Hub-Signature-256`` against every configured secret (constant-time compares)."""
    got = _header(headers, "X-Hub-Signature-256")
    if not got:
        raise SignatureRejected("missing header X-Hub-Signature-256")
    if not got.startswith("sha256="):
        raise SignatureRejected("X-Hub-Signature-256 must be sha256=<hex>")
    ok = False
    for secret in secrets:  # no early exit: the time taken does not depend on which secret matched
        ok |= hmac.compare_digest(github_signature(secret, body).encode(), _bytes(got))
    if not ok:
        raise SignatureRejected("signature does not match the body (X-Hub-Signature-256)")
    return Delivery(_delivery_id(_header(headers, "X-GitHub-Delivery"), "X-GitHub-Delivery"), body)


def verify_standard(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> Delivery:
    """Check a Standard Webhooks delivery: timestamp within ``tolerance_s``, any ``v1`` signature valid."""
    msg_id, ts, sigs = (_header(headers, h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not msg_id or not ts or not sigs:
        missing = [
            h for h, v in (("webhook-id", msg_id), ("webhook-timestamp", ts), ("webhook-signature", sigs)) if not v
        ]
        raise SignatureRejected(f"missing header {', '.join(missing)}")
    if not _UNIX_SECONDS.fullmatch(ts):
        raise SignatureRejected("webhook-timestamp must be Unix seconds (1-12 digits)")
    stamp = int(ts)
    now_s = int(time.time() if now is None else now)
    if abs(now_s - stamp) > tolerance_s:
        age = "old" if stamp < now_s else "ahead"
        raise SignatureRejected(
            f"webhook-timestamp is {abs(now_s - stamp)} s {age}; at most {tolerance_s} s is accepted"
        )
    offered = [s.strip() for s in sigs.split(" ") if s.strip().startswith("v1,")]
    if not offered:
        raise SignatureRejected("webhook-signature has no v1 signature")
    ok = False
    for secret in secrets:
        expected = standard_signature(secret, msg_id, stamp, body).encode()
        for sig in offered:
            ok |= hmac.compare_digest(expected, _bytes(sig))
    if not ok:
        raise SignatureRejected("no webhook-signature matches the body")
    return Delivery(_delivery_id(msg_id, "webhook-id"), body, stamp)


def verify(
    scheme: Literal["github", "standard"],
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> Delivery:
    if not secrets:
        raise SignatureRejected("no secret is configured for this source")
    if scheme == "github":
        return verify_github(secrets, headers, body)
    return verify_standard(secrets, headers, body, now=now, tolerance_s=tolerance_s)


# -- payloads ---------------------------------------------------------------------------------------
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class BatchLanded(BaseModel):
    """ "A batch landed at this URI": becomes an ``<model>__ingest`` run of ``day`` reading ``source_uri``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_uri: str = Field(min_length=1, max_length=1024, description="where the batch lies (any fsspec URI)")
    day: dt.date = Field(
        description="the data interval the batch belongs to: the day (YYYY-MM-DD, in the schedule's time zone) "
        "on which the model's schedule starts it"
    )
    rows: int | None = Field(default=None, ge=0, le=MAX_ROWS, description="rows the sender wrote; the gate compares")
    sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="content hash the sender computed; the gate compares"
    )

    @field_validator("source_uri")
    @classmethod
    def _no_relative(cls, v: str) -> str:
        if "://" not in v and not v.startswith("/"):
            raise ValueError("must be an absolute path or a URI with a scheme (s3://, file://, ...)")
        if ".." in v.split("/"):
            raise ValueError("must not contain '..'")
        return v

    @field_validator("day", mode="before")
    @classmethod
    def _a_written_day(cls, v: Any) -> Any:
        # a date as text, nothing else: pydantic alone would take a Unix timestamp or a midnight datetime
        if not isinstance(v, str) or not _DAY.fullmatch(v):
            raise ValueError("must be a date written YYYY-MM-DD")
        return v


PAYLOADS: dict[str, type[BaseModel]] = {"batch_landed": BatchLanded}


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays/objects deeper than ``limit`` (strings skipped), without parsing it."""
    if body.count(b"[") + body.count(b"{") <= limit:  # cannot nest deeper: no need to walk it
        return False
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def parse_payload(kind: str, body: bytes) -> BaseModel:
    """Parse a verified body with the source's schema.

    :raises PayloadRejected: not JSON (or JSON Python cannot hold: nesting deeper than
        :data:`MAX_JSON_DEPTH`, an integer of thousands of digits), or the first invalid field named with
        what is wrong with it
    """
    import json

    if json_depth_exceeds(body, MAX_JSON_DEPTH):
        raise PayloadRejected(f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels; a {kind} payload is one object")
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise PayloadRejected(f"body is not JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise PayloadRejected(f"body must be a JSON object, not {type(data).__name__}")
    try:
        return PAYLOADS[kind].model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise PayloadRejected(f"{field}: {msg}", field=field) from None


def check_uri_allowed(uri: str, prefixes: Sequence[str], protocols: Iterable[str] = ("file",)) -> str:
    """A webhook may only point ingestion at the places configured for its source, with the protocols its
    model's source reads (:func:`airloop.confine.confine_uri`: symlinks resolved, no chaining, no escapes).

    :returns: what ingestion would read (the resolved path, or the URI)
    :raises PayloadRejected: on ``source_uri``, naming the rule
    """
    from airloop.confine import UriRejected, confine_uri

    try:
        return confine_uri(uri, prefixes, protocols)
    except UriRejected as e:
        raise PayloadRejected(f"source_uri: {e}", field="source_uri") from None


# -- days: what a delivery's ``day`` names in the model's schedule -----------------------------------
#: Airflow's cron presets, as the timetable reads them
_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_SECOND = dt.timedelta(seconds=1)


class _Cron:
    """The ticks of a schedule, computed as Airflow's cron timetable does: on naive local time, then
    made aware in the schedule's time zone; every datetime in and out is UTC."""

    def __init__(self, schedule: ScheduleConfig):
        from zoneinfo import ZoneInfo

        self.expr = _PRESETS.get(schedule.cron, schedule.cron)
        self.tz = ZoneInfo(schedule.timezone)

    def _step(self, at: dt.datetime, forward: bool) -> dt.datetime:
        from croniter import croniter

        it = croniter(self.expr, at.astimezone(self.tz).replace(tzinfo=None))
        tick: dt.datetime = it.get_next(dt.datetime) if forward else it.get_prev(dt.datetime)
        return tick.replace(tzinfo=self.tz).astimezone(dt.UTC)

    def after(self, at: dt.datetime) -> dt.datetime:
        """The first tick strictly after ``at``."""
        return self._step(at, forward=True)

    def at_or_before(self, at: dt.datetime) -> dt.datetime:
        """The last tick at or before ``at``."""
        return self._step(at + _SECOND, forward=False)

    def first_two(self, day: dt.date) -> tuple[dt.datetime, dt.datetime] | None:
        """The first tick from the start of ``day`` on, and the one after; None at the ends of the calendar."""
        from croniter import CroniterError

        try:
            start = self.after(self.midnight(day) - _SECOND)
            return start, self.after(start)
        except (OverflowError, ValueError, CroniterError):
            return None

    def local_day(self, at: dt.datetime) -> dt.date:
        return at.astimezone(self.tz).date()

    def midnight(self, day: dt.date) -> dt.datetime:
        return dt.datetime(day.year, day.month, day.day, tzinfo=self.tz).astimezone(dt.UTC)


def _utc_midnight(day: dt.date) -> dt.datetime:
    """Where the DAGs put a config date: midnight UTC (``start_date``/``end_date`` of every model DAG)."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def day_interval(
    day: dt.date, schedule: ScheduleConfig, *, now: dt.datetime | None = None
) -> tuple[dt.datetime, dt.datetime]:
    """The data interval a delivery's ``day`` names: from the tick of the model's schedule on that day (in
    the schedule's time zone) to the next tick.

    The interval must be one whose run has tasks: its start at or after ``start_date`` and at or before
    ``end_date`` (midnight UTC, as the DAGs set them), and not in the future (``now``, default the clock).
    For a daily schedule every day in that range is one; for a weekly or monthly one only the days it
    ticks on; a schedule that ticks more than once a day has no interval a day could name.

    :raises PayloadRejected: on ``day``, with the allowed range
    """
    now = now or dt.datetime.now(dt.UTC)
    cron = _Cron(schedule)
    ticks = cron.first_two(day)
    if ticks is not None:
        start, end = ticks
        if cron.local_day(start) != day:
            raise PayloadRejected(
                f"day: {day} is not a day on which the schedule ({schedule.cron}, {schedule.timezone}) starts a data "
                f"interval; the next one starts on {cron.local_day(start)}",
                field="day",
            )
        if cron.local_day(end) == day:
            raise PayloadRejected(
                f"day: the schedule ({schedule.cron}) starts more than once a day, so a day names no single data "
                "interval; batch_landed needs a schedule of at most one interval a day",
                field="day",
            )
    lo = _utc_midnight(schedule.start_date)
    hi = min(_utc_midnight(schedule.end_date), now) if schedule.end_date else now
    if ticks is None or not lo <= ticks[0] <= hi:
        raise PayloadRejected(f"day: {day} is outside the model's schedule; {_allowed_days(cron, lo, hi)}", field="day")
    return ticks


def _allowed_days(cron: _Cron, lo: dt.datetime, hi: dt.datetime) -> str:
    try:
        first, last = cron.after(lo - _SECOND), cron.at_or_before(hi)
    except (OverflowError, ValueError):  # pragma: no cover - a config at the ends of the calendar
        return "no day of it can be named"
    if first > last:
        return "it has no interval yet"
    return f"allowed: a day from {cron.local_day(first)} to {cron.local_day(last)} on which it starts an interval"


# -- one delivery, checked whole ---------------------------------------------------------------------
def body_sha256(body: bytes) -> str:
    """The hash a delivery is deduplicated by besides its id: of the exact bytes that were signed."""
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class AcceptedDelivery:
    """A delivery that passed every check: what the route turns into a run."""

    delivery: Delivery
    payload: BatchLanded
    interval: tuple[dt.datetime, dt.datetime]
    body_sha256: str


def check_delivery(
    source: WebhookSourceConfig,
    schedule: ScheduleConfig,
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    prefixes: Sequence[str],
    protocols: Iterable[str],
    now: float | None = None,
) -> AcceptedDelivery:
    """Signature, then payload schema, then ``source_uri``, then ``day``.

    :raises WebhookRejected: at the first check that fails (its ``status``: 401 or 400), and nothing else
    """
    when = time.time() if now is None else now
    delivery = verify(source.scheme, secrets, headers, body, now=when, tolerance_s=source.tolerance_seconds)
    payload = parse_payload(source.payload, body)
    assert isinstance(payload, BatchLanded)
    check_uri_allowed(payload.source_uri, prefixes, protocols)
    interval = day_interval(payload.day, schedule, now=dt.datetime.fromtimestamp(when, dt.UTC))
    return AcceptedDelivery(delivery, payload, interval, body_sha256(body))


def run_id_for(source: str, delivery_id: str) -> str:
    """The DAG run id of a delivery: the same delivery always maps to the same run."""
    return f"webhook__{source}__{delivery_id}"
