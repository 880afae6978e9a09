"""Webhook deliveries: signature checks and payload schemas, free of Airflow and of any web framework.

Two signature schemes, both checked on the raw body, in constant time, before the body is parsed:

* ``github``: header ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``; the delivery id is
  ``X-GitHub-Delivery``.
* ``standard`` (Standard Webhooks): ``webhook-id``, ``webhook-timestamp`` (Unix seconds, at most
  ``tolerance_s`` old or ahead) and ``webhook-signature``: space-separated ``v1,<base64 HMAC-SHA256 of
  "<id>.<timestamp>.<body>">`` entries; any one valid signature passes (key rotation). Secrets may be given
  as ``whsec_<base64>`` (the spec's form) or as plain text.

Several secrets may be configured for one source (rotation): a delivery signed with any of them passes.
The plugin (``plugins/airloop_plugin.py``) maps a verified, valid delivery to a DAG run whose run id is
made from the delivery id, so a repeated delivery finds its run instead of creating another.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from airloop.config import WebhookSourceConfig

#: what a delivery id may contain (it becomes part of an Airflow run id)
DELIVERY_ID = re.compile(r"^[A-Za-z0-9_.:+~-]{1,100}$")
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


def _delivery_id(value: str | None, header: str) -> str:
    if not value:
        raise PayloadRejected(f"missing header {header}: every delivery needs an id", field=header)
    if not DELIVERY_ID.match(value):
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
    signed = f"{msg_id}.{timestamp}.".encode() + body
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
        ok |= hmac.compare_digest(github_signature(secret, body).encode(), got.encode())
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
    try:
        stamp = int(ts)
    except ValueError:
        raise SignatureRejected("webhook-timestamp must be Unix seconds") from None
    now = time.time() if now is None else now
    if abs(now - stamp) > tolerance_s:
        age = "old" if stamp < now else "ahead"
        raise SignatureRejected(
            f"webhook-timestamp is {abs(int(now - stamp))} s {age}; at most {tolerance_s} s is accepted"
        )
    offered = [s.strip() for s in sigs.split(" ") if s.strip().startswith("v1,")]
    if not offered:
        raise SignatureRejected("webhook-signature has no v1 signature")
    ok = False
    for secret in secrets:
        expected = standard_signature(secret, msg_id, stamp, body).encode()
        for sig in offered:
            ok |= hmac.compare_digest(expected, sig.encode())
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
class BatchLanded(BaseModel):
    """ "A batch landed at this URI": becomes an ``<model>__ingest`` run of ``day`` reading ``source_uri``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_uri: str = Field(min_length=1, max_length=1024, description="where the batch lies (any fsspec URI)")
    day: dt.date = Field(description="the data interval (one day) the batch belongs to")
    rows: int | None = Field(default=None, ge=0, description="rows the sender wrote, for the record")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="content hash the sender computed")

    @field_validator("source_uri")
    @classmethod
    def _no_relative(cls, v: str) -> str:
        if "://" not in v and not v.startswith("/"):
            raise ValueError("must be an absolute path or a URI with a scheme (s3://, file://, ...)")
        if ".." in v.split("/"):
            raise ValueError("must not contain '..'")
        return v


PAYLOADS: dict[str, type[BaseModel]] = {"batch_landed": BatchLanded}


def parse_payload(kind: str, body: bytes) -> BaseModel:
    """Parse a verified body with the source's schema.

    :raises PayloadRejected: not JSON, or the first invalid field named with what is wrong with it
    """
    import json

    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PayloadRejected(f"body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise PayloadRejected(f"body must be a JSON object, not {type(data).__name__}")
    try:
        return PAYLOADS[kind].model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise PayloadRejected(f"{field}: {msg}", field=field) from None


def check_uri_allowed(uri: str, prefixes: Sequence[str]) -> None:
    """A webhook may only point ingestion at the places configured for its source."""
    norm = _comparable(uri)
    if not any(norm.startswith(_comparable(p).rstrip("/") + "/") for p in prefixes):
        raise PayloadRejected(f"source_uri: must lie under one of {list(prefixes)}", field="source_uri")


def _comparable(uri: str) -> str:
    """A local path without ``file://`` and with links resolved (as the data root resolves its own), so
    a prefix and a URI name the same folder the same way; other URIs as they are."""
    path = uri.removeprefix("file://")
    if "://" in path:
        return path
    return os.path.realpath(path) + ("/" if path.endswith("/") else "")


def run_id_for(source: str, delivery_id: str) -> str:
    """The DAG run id of a delivery: the same delivery always maps to the same run."""
    return f"webhook__{source}__{delivery_id}"
