"""Send signed "batch landed" deliveries to the local stack's webhook route, as an upstream system would."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import TYPE_CHECKING, Any

from airloop.http import HttpClient, HttpError

if TYPE_CHECKING:
    from airloop.config import PipelineConfig, WebhookSourceConfig
    from airloop_local.stack import StackSettings

#: statuses a sender re-sends on (the same delivery id, so a repeat is harmless): 503 means the
#: metadata database is busy
RESEND_STATUSES = frozenset({502, 503, 504})


class UnknownWebhookSource(ValueError):
    """No pipeline config names a webhook source of that name."""


class WebhookSender:
    """Signs deliveries with the local stack's secret of each source and POSTs them to its API server.

    :param settings: the local stack (its address and webhook secrets)
    :param timeout: seconds for one attempt
    :param retries: re-sends of one delivery on a refused connection or a 502/503/504 answer
    :param backoff: the first wait between re-sends in seconds; it doubles, up to 10 s
    """

    def __init__(self, settings: StackSettings, *, timeout: float = 30.0, retries: int = 0, backoff: float = 2.0):
        self.settings = settings
        self.http = HttpClient(
            f"{settings.base_url}/airloop/webhooks",
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            retry_statuses=RESEND_STATUSES,
        )

    def send(
        self, source_name: str, day: dt.date, uri: str | None = None, delivery_id: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST one delivery for the batch of ``day`` (``uri``: default the model's landing file of that
        day); return the HTTP status and the JSON answer, whatever the status."""
        cfg, source = find_source(source_name)
        body = json.dumps({"source_uri": uri or _landing_file(self.settings, cfg, day), "day": day.isoformat()})
        headers = _signed(self.settings, source, delivery_id or f"msg_{uuid.uuid4().hex}", body.encode())
        try:
            answer = self.http.post(source_name, data=body.encode(), headers=headers, ok=_answered())
        except HttpError as e:
            if e.status == 0:  # no answer at all
                raise
            return e.status, _json_or_empty(e.body)
        return answer.status, _json_or_empty(answer.text())


def deliver(
    settings: StackSettings, source_name: str, day: dt.date, retries: int = 5, backoff: float = 2.0
) -> tuple[int, dict[str, Any]]:
    """One delivery, re-sent with the same id while the server is busy; raise unless it was accepted."""
    from airloop_local.stack import StackError

    status, answer = WebhookSender(settings, retries=retries, backoff=backoff).send(source_name, day)
    if status not in (200, 202):
        raise StackError(f"webhook {source_name} for {day} refused: HTTP {status} {answer}")
    return status, answer


def find_source(source_name: str) -> tuple[PipelineConfig, WebhookSourceConfig]:
    """The model and webhook source configured under ``source_name``."""
    from airloop.config import find_webhook_source

    found = find_webhook_source(source_name)
    if found is None:
        raise UnknownWebhookSource(f"no webhook source named {source_name!r}; see webhooks: in the pipeline configs")
    return found


def _answered() -> tuple[int, ...]:
    """Every error status that comes back as an answer (the re-sent ones are raised once re-sends run out)."""
    return tuple(s for s in range(400, 600) if s not in RESEND_STATUSES)


def _landing_file(settings: StackSettings, cfg: PipelineConfig, day: dt.date) -> str:
    from airloop.ingest import landing_uri
    from airloop.storage import DataRoot

    return landing_uri(cfg, DataRoot(settings.data_root), f"ds={day.isoformat()}")


def _signed(settings: StackSettings, source: WebhookSourceConfig, delivery_id: str, body: bytes) -> dict[str, str]:
    from airloop import webhooks as wh

    secret = settings.webhook_secret(source.connection_id)
    return {**wh.signed_headers(source.scheme, secret, delivery_id, body), "Content-Type": "application/json"}


def _json_or_empty(text: str) -> dict[str, Any]:
    try:
        answer = json.loads(text) if text else {}
    except ValueError:
        return {"detail": text[:500]}
    return answer if isinstance(answer, dict) else {"answer": answer}
