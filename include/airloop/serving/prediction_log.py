"""A durable prediction log: one JSON line per prediction, on disk before the client gets its answer.

Files are ``<root>/predictions/<model>/ds=<UTC date of the event>/<process id>-<start>.jsonl`` (the
event time is the request's ``X-Event-Time``, else the time of the prediction). Each write is flushed
and fsynced before the response is sent, so a crash or restart loses no acknowledged prediction; a crash
in the middle of a write can leave one partial last line, which :func:`read_log` skips and counts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path
from typing import Any

from airloop.storage import DataRoot


def log_folder(root: DataRoot | str | os.PathLike[str], model: str) -> Path:
    """The folder of a model's prediction log in a data root (a ``DataRoot`` or its local path); the model
    server writes it with plain file I/O (flush and fsync per request), so the root is a local folder."""
    data_root = root if isinstance(root, DataRoot) else DataRoot(root)
    return Path(data_root.predictions(model))


class PredictionLog:
    """:param root: the data root (local); :param model: the model name"""

    def __init__(self, root: DataRoot | str | os.PathLike[str], model: str):
        self.base = log_folder(root, model)
        self.model = model
        self._lock = threading.Lock()
        self._fh: Any = None
        self._day: str | None = None
        self._name = f"{os.getpid()}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}.jsonl"

    def _file(self, day: str) -> Any:
        if self._day != day:
            if self._fh:
                self._fh.close()
            folder = self.base / f"ds={day}"
            folder.mkdir(parents=True, exist_ok=True)
            self._fh = open(folder / self._name, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
            self._day = day
        return self._fh

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write records durably (flush + fsync) before returning."""
        if not records:
            return
        day = records[0].get("event_time", records[0]["timestamp"])[:10]
        data = "".join(json.dumps(r, default=str, separators=(",", ":")) + "\n" for r in records)
        with self._lock:
            fh = self._file(day)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def close(self) -> None:
        with self._lock:
            if self._fh:
                self._fh.close()
                self._fh = None


def read_log(
    root: DataRoot | str | os.PathLike[str], model: str, day: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """All logged predictions (of one day, or all days), and the number of partial lines skipped."""
    base = log_folder(root, model)
    files = sorted(base.glob(f"ds={day}/*.jsonl" if day else "ds=*/*.jsonl"))
    out, partial = [], 0
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                partial += 1
    return out, partial


def read_log_since(root: DataRoot | str | os.PathLike[str], model: str, since: float) -> list[dict[str, Any]]:
    """Predictions made at or after ``since`` (epoch seconds), whatever their event day: only files
    written to since then are read."""
    base = log_folder(root, model)
    since_iso = dt.datetime.fromtimestamp(since, dt.UTC).isoformat()
    out = []
    for f in sorted(base.glob("ds=*/*.jsonl")):
        if f.stat().st_mtime < since - 1.0:
            continue
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec["timestamp"] >= since_iso:
                out.append(rec)
    return out
