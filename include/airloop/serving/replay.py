"""Replay real rows as live scoring traffic: one request per row, the way an upstream system would call
the model, with a sticky ``X-Request-Key`` per row (its ``schema.key_columns``) and its event time.

Used by the demo (so the canary is judged on real traffic) and by the canary tests.
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from airloop.http import HttpError
from airloop.serving.client import ModelServerClient

if TYPE_CHECKING:
    from airloop.config import PipelineConfig


def request_bodies(
    df: Any, columns: list[str], event_time_column: str | None = None, key_columns: list[str] | tuple[str, ...] = ()
) -> Iterable[tuple[str | None, bytes, str | None]]:
    """(request key, JSON body in ``dataframe_split`` form, event time) per row.

    :param columns: what each request carries (the model's inputs, plus the columns outcomes join on)
    :param event_time_column: the row's event time, sent as ``X-Event-Time``
    :param key_columns: the row's identity, sent as the sticky ``X-Request-Key`` (None without keys)
    """
    cols = [c for c in dict.fromkeys([*columns, *key_columns]) if c in df.columns]
    split = json.loads(df[cols].to_json(orient="split", index=False, date_format="iso"))
    times: list[str | None] = [None] * len(df)
    if event_time_column and event_time_column in df.columns:
        times = [t.isoformat() if hasattr(t, "isoformat") else None for t in df[event_time_column]]
    for values, when in zip(split["data"], times, strict=True):
        row = dict(zip(cols, values, strict=True))
        key = "-".join(str(row.get(k)) for k in key_columns) if key_columns else None
        yield key, json.dumps({"dataframe_split": {"columns": cols, "data": [values]}}).encode(), when


def bodies_for(cfg: PipelineConfig, df: Any) -> list[tuple[str | None, bytes, str | None]]:
    """One request per row of ``df`` (raw rows of the model's schema), as the model's config describes
    them: its request columns plus the outcome key, its key columns, its event time."""
    columns = [*cfg.request_columns, *cfg.deployment.outcome_key]
    return list(request_bodies(df, columns, cfg.event_time, cfg.data_schema.key_columns))


def send(
    client: ModelServerClient, body: bytes, key: str | None, event_time: str | None = None
) -> tuple[int, dict[str, Any] | None]:
    """POST one request; (status, JSON body), an error status included. A connection failure is status 0."""
    try:
        return 200, client.invocations(body, request_key=key, event_time=event_time)
    except HttpError as e:
        return e.status, _json_or_none(e.body) if e.status else None


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def replay(
    url: str,
    bodies: list[tuple[str | None, bytes, str | None]],
    *,
    concurrency: int = 4,
    stop: Callable[[], bool] | None = None,
    loop: bool = False,
    timeout: float = 10.0,
) -> collections.Counter[str]:
    """Send ``bodies`` from ``concurrency`` threads until all are sent (or, with ``loop``, until ``stop()``),
    each once: a failed request is counted, not retried, as an upstream system would see it.

    :returns: counts by status (``"200"``, ``"500"``, ``"0"`` for connection failures) and by
        ``variant:<name>`` for answered requests
    """
    client = ModelServerClient(url, timeout=timeout, retries=0)
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    position = {"i": 0}

    def next_body() -> tuple[str | None, bytes, str | None] | None:
        with lock:
            if stop is not None and stop():
                return None
            i = position["i"]
            if i >= len(bodies):
                if not loop or not bodies:
                    return None
                i = 0
            position["i"] = i + 1
            return bodies[i]

    def worker() -> None:
        while (item := next_body()) is not None:
            status, payload = send(client, item[1], item[0], event_time=item[2])
            with lock:
                counts[str(status)] += 1
                if status == 200 and payload:
                    counts[f"variant:{payload['variant']}"] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts
