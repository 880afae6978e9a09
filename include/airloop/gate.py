"""The gate's own checks: what a batch must satisfy as a delivery, beyond the values its suite judges.

An expectation suite judges values. These checks judge the batch as a delivery, which is what careless
upstreams break, each driven by the model's config:

* **row key** (``schema.key_columns``): no two rows share a key (a re-sent or concatenated file);
* **declared columns** (``schema.allow_extra_columns``, default false): no column the config does not name;
* **event time** (``schema.event_time``) inside the batch's data interval, whose bounds are read as wall-clock
  times in ``validation.event_time_timezone`` (default ``schedule.timezone``), give or take
  ``validation.event_time_tolerance_minutes``: no rows of another day;
* **announcements**: the ``rows`` and ``sha256`` that a webhook delivery or the producer's manifest file
  (``source.manifest_file``) announced equal the rows read and the SHA-256 of the bytes received;
* **relative row count** (``validation.min_rows_relative``): not below that share of the median row count
  of the last ``validation.min_rows_window`` published batches (no published batch yet: ``min_rows`` only).

Each check is an :class:`~airloop.validation.ExpectationOutcome` beside the suite's expectations, so it shows in
the task log, ``validation.json`` and the HTML report the same way, and a failure says what to do. What a
check needs besides the rows (the interval, the announcements, the hash of the bytes, recent row counts)
comes in a :class:`BatchContext`, built from the batch's ingest manifest; a check whose input is absent is
not listed (a sample checked by ``airloop model check`` has no data interval, nothing announced, no history).

The rule for a file cut short (a text file must end with a newline, and every CSV row has the header's
number of fields) is a question of reading the file, so it lives in :func:`airloop.ingest.read_batch`.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airloop.config import PipelineConfig
from airloop.errors import BatchFormatError
from airloop.storage import DataRoot
from airloop.validation import ExpectationOutcome

if TYPE_CHECKING:
    import pandas as pd

#: how many example keys or values a failed check shows
_SAMPLE = 10
_SHA256 = re.compile(r"[0-9a-f]{64}")

ROW_KEY = "expect_row_key_to_be_unique"
DECLARED_COLUMNS = "expect_table_columns_to_be_declared"
EVENT_TIME = "expect_event_time_in_data_interval"
ANNOUNCED_ROWS = "expect_announced_row_count_to_match"
ANNOUNCED_SHA256 = "expect_announced_sha256_to_match"
RELATIVE_ROWS = "expect_row_count_relative_to_recent_batches"


@dataclass(frozen=True)
class Announcement:
    """What a sender said about a batch before it was read: its row count and the SHA-256 of its bytes.

    :param by: who announced it, for the report (``webhook <source> delivery <id>``, ``manifest <uri>``)
    """

    by: str
    rows: int | None = None
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"by": self.by, "rows": self.rows, "sha256": self.sha256}

    @classmethod
    def parse(cls, by: str, values: Mapping[str, Any], where: str) -> Announcement | None:
        """Read ``rows`` and ``sha256`` from a JSON mapping (other keys are ignored); None if it announces neither.

        :param where: how to name the mapping in an error (``run conf webhook``, ``manifest <uri>``)
        :raises BatchFormatError: a value of the wrong form (a count must be a whole number, a hash 64 hex digits)
        """
        rows, sha = values.get("rows"), values.get("sha256")
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
            raise BatchFormatError(f"{where}.rows must be a whole number of rows, not {str(rows)[:80]!r}")
        if sha is not None and (not isinstance(sha, str) or not _SHA256.fullmatch(sha.lower())):
            raise BatchFormatError(f"{where}.sha256 must be the 64 hex digits of a SHA-256, not {str(sha)[:80]!r}")
        if rows is None and sha is None:
            return None
        return cls(by=by, rows=rows, sha256=sha.lower() if sha else None)


def announcements_from_conf(conf: Mapping[str, Any]) -> list[Announcement]:
    """The announcement of the webhook delivery that started a run (``webhook`` in its conf), if any.

    :raises BatchFormatError: ``webhook.rows`` or ``webhook.sha256`` of the wrong form (a conf set by hand)
    """
    hook = conf.get("webhook")
    if not isinstance(hook, Mapping):
        return []
    found = Announcement.parse(
        f"webhook {hook.get('source', '?')} delivery {hook.get('delivery_id', '?')}", hook, "run conf webhook"
    )
    return [found] if found else []


@dataclass(frozen=True)
class BatchContext:
    """What the gate knows of a batch besides its rows; every field may be absent (then its check is not run).

    :param interval_start: the data interval's start, ISO 8601 with an offset (as the manifest records it)
    :param interval_end: its end (exclusive)
    :param received_sha256: the SHA-256 of the bytes received
    :param announced: what senders announced
    :param recent_rows: row counts of the recent published batches, oldest first (None: not looked up)
    """

    interval_start: str | None = None
    interval_end: str | None = None
    received_sha256: str | None = None
    announced: tuple[Announcement, ...] = ()
    recent_rows: tuple[int, ...] | None = None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], recent_rows: Sequence[int] | None = None) -> BatchContext:
        """The context an ingest manifest records (``data_interval``, ``source_sha256``, ``announced``)."""
        interval = manifest.get("data_interval") or {}
        return cls(
            interval_start=interval.get("start"),
            interval_end=interval.get("end"),
            received_sha256=manifest.get("source_sha256"),
            announced=tuple(Announcement(**a) for a in manifest.get("announced") or ()),
            recent_rows=tuple(recent_rows) if recent_rows is not None else None,
        )


def check_batch(cfg: PipelineConfig, df: pd.DataFrame, context: BatchContext) -> list[ExpectationOutcome]:
    """Every gate check that applies to this batch, in the order a person should read them."""
    checks = [_declared_columns(cfg, df)]
    if cfg.data_schema.key_columns:
        checks.append(_row_key(cfg, df))
    if cfg.event_time and context.interval_start and context.interval_end:
        checks.append(_event_time(cfg, df, context.interval_start, context.interval_end))
    for a in context.announced:
        if a.rows is not None:
            checks.append(_announced_rows(a, len(df)))
        if a.sha256 is not None:
            checks.append(_announced_sha256(a, context.received_sha256))
    if cfg.validation.min_rows_relative is not None and context.recent_rows is not None:
        checks.append(_relative_rows(cfg, len(df), context.recent_rows))
    return checks


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts (numpy numbers as Python numbers, timestamps as ISO text, missing as None)."""
    out: list[dict[str, Any]] = json.loads(df.to_json(orient="records", date_format="iso"))
    return out


def _declared_columns(cfg: PipelineConfig, df: pd.DataFrame) -> ExpectationOutcome:
    allow = cfg.data_schema.allow_extra_columns
    undeclared = [str(c) for c in df.columns if c not in cfg.data_schema.columns]
    ok = allow or not undeclared
    if not ok:
        note = (
            f"{len(undeclared)} column(s) not in schema.columns: the producer changed its output. Have it send the "
            "declared columns only and re-run the interval; or declare them in schema.columns (and the suite), or "
            "set schema.allow_extra_columns: true to accept and ignore extras"
        )
    else:
        note = "allowed by schema.allow_extra_columns (kept, never read)" if undeclared else ""
    return ExpectationOutcome(
        expectation=DECLARED_COLUMNS,
        column=None,
        kwargs={"allow_extra_columns": allow},
        success=ok,
        observed={"undeclared": undeclared},
        note=note,
    )


def _row_key(cfg: PipelineConfig, df: pd.DataFrame) -> ExpectationOutcome:
    cols = list(cfg.data_schema.key_columns)
    kwargs: dict[str, Any] = {"columns": cols}
    missing = [c for c in cols if c not in df.columns]
    if missing:
        return ExpectationOutcome(
            ROW_KEY, None, kwargs, False, observed={"missing": missing}, note="key columns missing (see the schema)"
        )
    repeated = df.duplicated(cols, keep="first")
    n = int(repeated.sum())
    sample = _records(df.loc[repeated, cols].drop_duplicates().head(_SAMPLE)) if n else []
    note = ""
    if n:
        note = (
            f"{n} row(s) repeat the key of an earlier row: the batch holds rows twice (a re-sent or concatenated "
            "file?). Have the producer send each row once and re-run the interval; if rows may share these "
            "columns, declare the columns that do identify a row in schema.key_columns"
        )
    return ExpectationOutcome(
        expectation=ROW_KEY,
        column=None,
        kwargs=kwargs,
        success=n == 0,
        unexpected_count=n,
        unexpected_percent=100.0 * n / len(df) if len(df) else 0.0,
        sample=sample,
        note=note,
    )


def interval_window(cfg: PipelineConfig, start: str, end: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The instants a batch's events may fall in: the data interval's wall-clock bounds (in
    ``schedule.timezone``) read in ``validation.event_time_timezone``, both as aware timestamps in that zone.

    A daily interval ``[D, D+1)`` of a UTC schedule becomes ``[D 00:00, D+1 00:00)`` local time in a feed of
    local days; a bound that falls in a daylight-saving gap or fold is moved outwards, so the window is never
    narrower than the day.
    """
    import pandas as pd

    zone = cfg.validation.event_time_timezone or cfg.schedule.timezone

    def bound(text: str, earliest: bool) -> pd.Timestamp:
        t = pd.Timestamp(text)
        t = t.tz_localize("UTC") if t.tzinfo is None else t
        wall = t.tz_convert(cfg.schedule.timezone).tz_localize(None)
        return wall.tz_localize(zone, ambiguous=earliest, nonexistent="shift_backward" if earliest else "shift_forward")

    return bound(start, earliest=True), bound(end, earliest=False)


def _utc_naive(t: pd.Timestamp) -> pd.Timestamp:
    return t.tz_convert("UTC").tz_localize(None)


def _event_time(cfg: PipelineConfig, df: pd.DataFrame, start: str, end: str) -> ExpectationOutcome:
    import pandas as pd

    col = cfg.event_time
    assert col is not None
    lo, hi = interval_window(cfg, start, end)
    tolerance = cfg.validation.event_time_tolerance_minutes
    kwargs: dict[str, Any] = {
        "interval": f"{lo.isoformat()} .. {hi.isoformat()}",
        "timezone": str(lo.tz),
        "tolerance_minutes": tolerance,
    }
    if col not in df.columns or not pd.api.types.is_datetime64_any_dtype(df[col]):
        why = "is missing" if col not in df.columns else "does not hold timestamps"
        return ExpectationOutcome(
            EVENT_TIME, col, kwargs, False, note=f"not evaluated: the column {why} (see its schema check)"
        )
    times = df[col].dropna()
    first = _utc_naive(lo) - pd.Timedelta(minutes=tolerance)
    after_last = _utc_naive(hi) + pd.Timedelta(minutes=tolerance)
    before, after = times < first, times >= after_last
    outside = times[before | after]
    n = len(outside)
    observed = {
        "min": times.min().isoformat() if len(times) else None,
        "max": times.max().isoformat() if len(times) else None,
        "before": int(before.sum()),
        "after": int(after.sum()),
    }
    note = ""
    if n:
        note = (
            f"{n} row(s) outside the data interval: event times from {observed['min']} to {observed['max']} (UTC) "
            f"seen, the interval is {first.isoformat()} .. {after_last.isoformat()} (UTC). The file holds another "
            "interval's rows: have the producer deliver this interval's rows only and re-run it. If the feed's "
            "days are another zone's, set validation.event_time_timezone; for late events, "
            "validation.event_time_tolerance_minutes"
        )
    return ExpectationOutcome(
        expectation=EVENT_TIME,
        column=col,
        kwargs=kwargs,
        success=n == 0,
        observed=observed,
        unexpected_count=n,
        unexpected_percent=100.0 * n / len(times) if len(times) else 0.0,
        sample=[t.isoformat() for t in outside.drop_duplicates().head(_SAMPLE)],
        note=note,
    )


def _announced_rows(a: Announcement, rows: int) -> ExpectationOutcome:
    ok = a.rows == rows
    note = (
        ""
        if ok
        else f"{a.by} announced {a.rows} rows, {rows} were read: the file received is incomplete or not the one "
        "announced. Ask the producer to re-deliver it (or to correct the announcement) and re-run the interval"
    )
    return ExpectationOutcome(
        ANNOUNCED_ROWS, None, {"announced_by": a.by}, ok, observed={"announced": a.rows, "read": rows}, note=note
    )


def _announced_sha256(a: Announcement, received: str | None) -> ExpectationOutcome:
    ok = received is not None and a.sha256 == received
    note = (
        ""
        if ok
        else f"{a.by} announced a SHA-256 the bytes received do not have: the file was changed, cut or replaced "
        "after it was announced. Ask the producer to re-deliver it (or to correct the announcement) and re-run "
        "the interval"
    )
    return ExpectationOutcome(
        ANNOUNCED_SHA256,
        None,
        {"announced_by": a.by},
        ok,
        observed={"announced": a.sha256, "received": received},
        note=note,
    )


def _relative_rows(cfg: PipelineConfig, rows: int, recent: Sequence[int]) -> ExpectationOutcome:
    share = cfg.validation.min_rows_relative
    assert share is not None
    kwargs: dict[str, Any] = {"min_share": share, "window": cfg.validation.min_rows_window}
    if not recent:
        return ExpectationOutcome(
            RELATIVE_ROWS,
            None,
            kwargs,
            True,
            observed={"rows": rows, "recent_batches": 0},
            note="no published batch yet: only validation.min_rows applies",
        )
    median = statistics.median(recent)
    floor = median * share
    ok = rows >= floor
    note = (
        ""
        if ok
        else f"{rows} rows is below {share:.0%} of the median of the last {len(recent)} published batches "
        f"({median:g} rows): a partial export, or part of the feed lost. Have the producer re-deliver the whole "
        "batch and re-run the interval; if the batch really is this small (an outage upstream, a holiday), lower "
        "validation.min_rows_relative, then release it"
    )
    return ExpectationOutcome(
        RELATIVE_ROWS,
        None,
        kwargs,
        ok,
        observed={"rows": rows, "recent_median": median, "floor": floor, "recent_batches": len(recent)},
        note=note,
    )


def recent_row_counts(cfg: PipelineConfig, root: DataRoot, partition: str) -> tuple[int, ...]:
    """Row counts of the last ``validation.min_rows_window`` published batches before ``partition``, oldest first.

    Published: a raw partition whose validation result passed for its current content (the rule of
    :func:`airloop.catalog.validated_partitions`). "Before" is by partition key: for a day (``ds=``), earlier
    days only, so a backfill is judged against the days before it; for a run partition (``run=``), any other.
    """
    window = cfg.validation.min_rows_window
    names = [u.rsplit("/", 1)[-1] for u in root.list_partitions("raw", cfg.name)]
    if partition.startswith("ds="):
        names = [n for n in names if n.startswith("ds=") and n < partition]
    else:
        names = [n for n in names if n != partition]
    counts: list[int] = []
    for name in reversed(names):
        if len(counts) == window:
            break
        result_uri = root.validation_result(cfg.name, name)
        if not root.exists(result_uri):
            continue
        manifest = root.read_json(root.manifest(root.raw(cfg.name, name)))
        result = root.read_json(result_uri)
        rows = manifest.get("rows")
        if (
            result.get("success")
            and result.get("content_hash") == manifest.get("content_hash")
            and isinstance(rows, int)
        ):
            counts.append(rows)
    return tuple(reversed(counts))
