"""Replay real rows as live scoring traffic: one request per row (one flight), the way an upstream
booking or ops system would call the model, with a sticky ``X-Request-Key`` per flight.

Used by the demo (so the canary is judged on real traffic) and by the canary tests.
"""

from __future__ import annotations

import collections
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

#: Sent along with the model's inputs so logged predictions can be joined with outcomes later.
ID_COLUMNS = ["flight", "tailnum"]


def request_bodies(df: Any, columns: list[str], event_time_column: str = "time_hour") -> Iterable[tuple[str, bytes, str | None]]:
    """(request key, JSON body in ``dataframe_split`` form, event time) per row; the event time (for
    ``X-Event-Time``) is the row's scheduled departure hour when it has one."""
    cols = [c for c in columns + ID_COLUMNS if c in df.columns]
    split = json.loads(df[cols].to_json(orient="split", index=False, date_format="iso"))
    times = [None] * len(df)
    if event_time_column in df.columns:
        times = [t.isoformat() if hasattr(t, "isoformat") else None for t in df[event_time_column]]
    for values, when in zip(split["data"], times, strict=True):
        row = dict(zip(cols, values, strict=True))
        key = f"{row.get('year')}-{row.get('month')}-{row.get('day')}-{row.get('carrier')}{row.get('flight')}-{row.get('origin')}"
        yield key, json.dumps({"dataframe_split": {"columns": cols, "data": [values]}}).encode(), when


def send(url: str, body: bytes, key: str | None, timeout: float = 10.0,
         event_time: str | None = None) -> tuple[int, dict[str, Any] | None]:
    """POST one request; (status, JSON body). A connection failure is status 0."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["X-Request-Key"] = key
    if event_time:
        headers["X-Event-Time"] = event_time
    req = urllib.request.Request(f"{url.rstrip('/')}/invocations", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (the caller's own server)
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except (urllib.error.URLError, OSError):
        return 0, None


def replay(url: str, bodies: list[tuple[str, bytes, str | None]], *, concurrency: int = 4,
           stop: Callable[[], bool] | None = None, loop: bool = False) -> collections.Counter[str]:
    """Send ``bodies`` from ``concurrency`` threads until all are sent (or, with ``loop``, until ``stop()``).

    :returns: counts by status (``"200"``, ``"500"``, ``"0"`` for connection failures) and by
        ``variant:<name>`` for answered requests
    """
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    position = {"i": 0}

    def next_body() -> tuple[str, bytes, str | None] | None:
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
            status, payload = send(url, item[1], item[0], event_time=item[2])
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
