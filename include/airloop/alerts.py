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


def append_alert(root: DataRoot, record: dict[str, Any]) -> dict[str, Any]:
    """Append one alert record (needs ``model``, ``kind``, ``summary``); the whole file is rewritten
    atomically, so a crash never leaves half a line."""
    missing = [k for k in ("model", "kind", "summary") if k not in record]
    if missing:
        raise ValueError(f"an alert needs {missing}")
    record = {**record, "at": record.get("at") or dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    model = record["model"]
    root.write_jsonl_atomic(alerts_uri(root, model), [*read_alerts(root, model), record])
    log.warning("ALERT %s %s: %s", model, record["kind"], record["summary"])
    return record
