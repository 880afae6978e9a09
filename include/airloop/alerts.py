"""On-call alerts: one record per alert in the model's alert log (``reports/<model>/alerts.jsonl`` in the
data root), the local default channel. Each record says what happened and carries the figures that made
the decision, so the reader does not need to open the task log to know why.

It also finds the root error of a failure (:func:`exception_chain`, :func:`error_in_output`): alerts lead
with it, not with the wrapper that reported it (a spark-submit command line, an operator's task failure).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

from airloop.storage import DataRoot

log = logging.getLogger(__name__)


def read_alerts(root: DataRoot, model: str) -> list[dict[str, Any]]:
    return root.read_jsonl(root.alert_log(model))


def append_alert(root: DataRoot, record: dict[str, Any]) -> dict[str, Any]:
    """Append one alert record (needs ``model``, ``kind``, ``summary``); the whole file is rewritten
    atomically, so a crash never leaves half a line."""
    missing = [k for k in ("model", "kind", "summary") if k not in record]
    if missing:
        raise ValueError(f"an alert needs {missing}")
    record = {**record, "at": record.get("at") or dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    model = record["model"]
    root.write_jsonl_atomic(root.alert_log(model), [*read_alerts(root, model), record])
    log.warning("ALERT %s %s: %s", model, record["kind"], record["summary"])
    return record


# --- the root error of a failure ------------------------------------------------------------------------

#: the line a Python traceback ends with: a (dotted) exception class, then ``: message`` or nothing
_EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Failure|Fault|Timeout)(?::\s.*)?$"
)
_TRACEBACK_START = "Traceback (most recent call last):"
#: a JVM's uncaught exception, as it prints it: ``Exception in thread "main" java.lang.OutOfMemoryError: ...``
_JVM_UNCAUGHT = re.compile(r'Exception in thread "[^"]*" (\S.*)$')


def exception_chain(exc: BaseException | None, limit: int = 20) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first (as Python
    prints them, minus a context suppressed with ``raise ... from None``)."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not e for e in chain) and len(chain) < limit:
        chain.append(exc)
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    return chain


def one_line(exc: BaseException, bare: tuple[type[BaseException], ...] = ()) -> str:
    """``Type: first line of the message``, the way a traceback ends (with the URL of an HTTP error that
    does not name it); the message alone for the ``bare`` types (messages written for people, such as
    operators' task failures) or when it names its type."""
    lines = [s for s in (line.strip() for line in str(exc).splitlines()) if s]
    name = type(exc).__name__
    if not lines:
        return name
    first = lines[0]
    url = getattr(exc, "url", None)  # an HTTP error that does not say whose answer it was (urllib's)
    if isinstance(url, str) and url.startswith(("http://", "https://")) and url not in first:
        first = f"{first} ({url})"
    if isinstance(exc, bare) or first.startswith(f"{name}:"):
        return first
    return f"{name}: {first}"


def error_in_output(text: str, *, bare_lines: bool = False) -> str | None:
    """The root error a process printed: the exception line that ends the last Python traceback in
    ``text`` (for a PySpark job whose Python worker failed, the worker's error inside the driver's), else
    a JVM's uncaught exception. ``bare_lines``: ``text`` is a process's output whose start may be cut off,
    so an exception line counts without its ``Traceback`` header (the last one wins). None: no error found.
    """
    lines = [line.strip() for line in text.splitlines()]
    starts = [i for i, line in enumerate(lines) if _TRACEBACK_START in line]
    if starts:
        for line in lines[starts[-1] + 1 :]:
            if _EXCEPTION_LINE.match(line):
                return line
    for line in reversed(lines):
        if m := _JVM_UNCAUGHT.search(line):
            return m.group(1)
    if bare_lines:
        for line in reversed(lines):
            if _EXCEPTION_LINE.match(line):
                return line
    return None
