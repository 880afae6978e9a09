"""On-call alerts: one record per alert in the model's alert log (``reports/<model>/alerts.jsonl`` in the
data root), the local default channel. Each record says what happened and carries the figures that made
the decision, so the reader does not need to open the task log to know why.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airloop.storage import DataRoot

log = logging.getLogger(__name__)


def alerts_uri(root: DataRoot, model: str) -> str:
    return f"{root.uri}/reports/{model}/alerts.jsonl"


def read_alerts(root: DataRoot, model: str) -> list[dict[str, Any]]:
    return root.read_jsonl(alerts_uri(root, model))


def record_alert(root: DataRoot, model: str, *, kind: str, summary: str, details: dict[str, Any]) -> dict[str, Any]:
    """Append one alert (the whole file is rewritten atomically: a crash never leaves half a line)."""
    record = {"model": model, "kind": kind, "summary": summary, "details": details,
              "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    root.write_jsonl_atomic(alerts_uri(root, model), [*read_alerts(root, model), record])
    log.warning("ALERT %s %s: %s", model, kind, summary)
    return record
