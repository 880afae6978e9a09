"""Ingestion: one batch per data interval (or per ``source_uri``) into the raw zone, atomically.

Landing layout (source ``kind: files``, and the demo's ``replay`` adapter that fills it)::

    <landing>/<model>/<partition>/<file_name>

``<landing>`` is ``source.landing_uri``, any fsspec folder (``s3://bucket/feeds``, ``memory://feeds``,
``/srv/feeds``), or the data root's ``landing/`` when it is unset. ``<partition>`` is ``ds=YYYY-MM-DD`` (the
data interval's start date) or ``run=<run id>``; ``<file_name>`` is ``source.file_name``. The upstream system
writes one file there per interval, in ``source.format``:

- ``csv``: a header line, then one row a line; timestamps as ISO 8601 text. Columns declared
  ``string`` are read as text; the others' types are inferred.
- ``parquet``: one file; timestamp columns as Parquet timestamps (naive means UTC) or ISO 8601 text.
- ``jsonl``: one JSON object a line (JSON's own types are kept, nothing is guessed from text); timestamps
  as ISO 8601 strings or as epoch milliseconds (pandas' ``to_json`` default).

A webhook delivery names its file with ``source_uri`` instead; it is read the same way.

**A file cut short is unreadable.** A ``csv`` or ``jsonl`` file must end with a newline, and every CSV row must
have as many fields as the header. A transfer cut off, or a file read while it is being written, ends
mid-row; when the cut falls on a field boundary (or just after the last one) the rows still parse, and the
missing final newline is the only sign. So a text file without a final newline is refused as cut, whatever
its last row looks like: producers write whole lines (and should write to a temporary name, then rename).
A cut exactly after a newline leaves a well-formed, shorter file: only an announced row count or SHA-256
(below) or ``validation.min_rows_relative`` can tell. Parquet carries its own footer; a cut one does not parse.

**Announcements.** A webhook delivery may announce the batch's ``rows`` and ``sha256`` (kept in the run conf
under ``webhook``), and a producer may write a manifest file next to each batch, after it
(``source.manifest_file``, a JSON object with ``rows`` and/or ``sha256``): with one configured, a batch without
it has not landed yet (retried). What was announced is recorded in the raw manifest; the gate
(:mod:`airloop.gate`) compares it with what was read.

A batch is stored as ``raw/<model>/<partition>/data.parquet`` with ``_manifest.json`` (rows, columns,
content hash, source URI and hash, announcements, data interval, run id), and the bytes as received,
``received.<format>`` (whose SHA-256 is the manifest's ``source_sha256``), so that whatever stage refuses the
batch later, quarantine keeps exactly what came in. Whatever the format, the same rows give the same
stored frame and content hash: timestamps become naive UTC microseconds.
Re-ingesting an interval replaces its partition: rows are never duplicated. A file that cannot be read
in its declared format goes straight to quarantine with a report.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fsspec

from airloop import quarantine
from airloop.config import PipelineConfig, SchemaConfig
from airloop.errors import BatchFormatError, BatchNotFoundError
from airloop.gate import Announcement
from airloop.storage import (
    DATA_FILE,
    QUARANTINE_REPORT,
    RECEIVED_FILE,
    DataRoot,
    content_hash,
    frame_to_parquet_bytes,
    sha256_bytes,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interval:
    """A data interval as ISO strings (small, serialisable, no Airflow types)."""

    start: str | None
    end: str | None


def landing_uri(cfg: PipelineConfig, root: DataRoot, partition: str) -> str:
    """Where the feed drops the batch of a partition: ``<landing>/<model>/<partition>/<file_name>``.

    ``<landing>`` is ``source.landing_uri`` when set (any fsspec folder), else the data root's ``landing/``.
    """
    return landing_file(cfg.source.landing_uri or root, cfg.name, partition, cfg.source.file_name)


def landing_prefix(cfg: PipelineConfig, root: DataRoot) -> str:
    """``<landing>/<model>``: the folder every landing file of the model lies under."""
    return landing_folder(cfg.source.landing_uri or root, cfg.name)


def landing_folder(landing: DataRoot | str, model: str) -> str:
    """``<landing>/<model>``, under a data root's ``landing/`` zone or under any fsspec folder."""
    if isinstance(landing, DataRoot):
        return landing.landing_folder(model)
    base = landing if landing.endswith("://") else landing.rstrip("/")
    return f"{base}/{model}"


def landing_file(landing: DataRoot | str, model: str, partition: str, file_name: str) -> str:
    """The landing layout itself: ``<landing>/<model>/<partition>/<file_name>``, under a data root's
    ``landing/`` zone or under any fsspec folder (what source adapters write and ingestion reads)."""
    if isinstance(landing, DataRoot):
        return f"{landing.landing(model, partition)}/{file_name}"
    return f"{landing_folder(landing, model)}/{partition}/{file_name}"


def fetch_source(uri: str, cfg: PipelineConfig, root: DataRoot) -> bytes:
    """Read a batch from a URI the model's source may read (:mod:`airloop.confine`), refusing files over
    ``source.max_bytes``.

    The URI may come from a run conf, which anyone who can trigger the DAG sets, so it is checked here,
    not only where a webhook handed it in: its protocol must be one of the source's, and it must lie, with
    symlinks resolved, under the landing folder or a webhook source's ``allowed_prefixes``. A local file
    is then read by its resolved path without following any link, so a symlink swapped in after the
    check is not followed.

    :raises UriRejected: the URI breaks a confinement rule (named in the message); not retried
    :raises BatchNotFoundError: nothing there yet
    """
    from airloop.confine import (
        LOCAL,
        UriRejected,
        confine_uri,
        protocol_of,
        read_confined,
        source_prefixes,
        source_protocols,
    )

    max_bytes = cfg.source.max_bytes
    try:
        target = confine_uri(uri, source_prefixes(cfg, root), source_protocols(cfg, root))
    except UriRejected as e:
        raise UriRejected(f"source_uri {uri[:300]!r} of {cfg.name} is refused: {e}", e.rule) from None
    missing = BatchNotFoundError(
        f"no batch at {uri}: the upstream feed has not delivered it yet (the task retries), "
        "or the source_uri in the run conf is wrong"
    )
    if protocol_of(target) == LOCAL:
        try:
            data = read_confined(target, max_bytes)
        except UriRejected as e:
            if e.rule == "size":
                raise BatchFormatError(
                    f"batch {uri} is over the configured source.max_bytes of {max_bytes}: {e}"
                ) from None
            raise UriRejected(f"source_uri {uri[:300]!r} of {cfg.name} is refused: {e}", e.rule) from None
        if data is None:
            raise missing
        return data
    fs, path = fsspec.core.url_to_fs(target)
    if not fs.exists(path):
        raise missing
    size = fs.size(path)
    if size is not None and size > max_bytes:
        raise BatchFormatError(f"batch {uri} is {size} bytes, over the configured source.max_bytes of {max_bytes}")
    return bytes(fs.cat_file(path))


def read_batch(data: bytes, cfg: PipelineConfig) -> pd.DataFrame:
    """Parse a batch in its declared format; types come from the file, so wrong types reach the gate intact.

    Timestamp columns are parsed as UTC and stored naive (UTC, microseconds); a column that does not
    parse is kept as it came so the validation gate reports it.

    :raises BatchFormatError: when the bytes are not a readable file of the declared format
    """
    import pandas as pd

    fmt = cfg.source.format
    if not data:
        raise BatchFormatError(f"the batch is an empty file (0 bytes), not a {fmt} file with a header")
    try:
        df = _READERS[fmt](data, cfg.data_schema)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BatchFormatError(f"the batch is not a readable {fmt} file: {type(e).__name__}: {first}") from e
    if len(df.columns) == 1 and len(cfg.data_schema.columns) > 1 and fmt == "csv":
        # A binary or otherwise foreign file often parses as a single garbage column: say so plainly.
        raise BatchFormatError(
            f"the batch is not a readable csv file: one column {str(df.columns[0])[:40]!r} found, "
            f"{len(cfg.data_schema.columns)} declared"
        )
    _check_not_cut(data, fmt)
    for col in cfg.data_schema.timestamp_columns:
        if col in df.columns:
            df[col] = _as_timestamps(df[col], fmt)
    return df


def _check_not_cut(data: bytes, fmt: str) -> None:
    """Refuse a text file whose last row may be cut (see "A file cut short" in the module doc).

    :raises BatchFormatError: no final newline, or a CSV row with another number of fields than the header
    """
    if fmt not in ("csv", "jsonl"):
        return
    if not data.endswith(b"\n"):
        raise BatchFormatError(
            f"the batch is not a readable {fmt} file: it does not end with a newline, so its last row is cut "
            f"(a transfer cut off, or a file read while being written; it ends with {data[-40:]!r}). A whole "
            f"{fmt} file ends every row, the last one too, with a newline: ask the producer to re-deliver the "
            "whole file (written to a temporary name and renamed when complete)"
        )
    if fmt == "csv":
        _check_csv_fields(data)


def _check_csv_fields(data: bytes) -> None:
    """Every CSV row has the header's number of fields (pandas fills a short row with missing values)."""
    import csv

    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace"), newline=""))
    width = len(next(reader, []))
    for row in reader:
        if row and len(row) != width:
            raise BatchFormatError(
                f"the batch is not a readable csv file: line {reader.line_num} has {len(row)} fields, the header "
                f"{width}: the row is cut or malformed ({','.join(row)[:80]!r}). Ask the producer to re-deliver "
                "the whole file"
            )


def _read_csv(data: bytes, schema: SchemaConfig) -> pd.DataFrame:
    import pandas as pd

    # CSV has no types: declared text stays text ("007" is not 7); other columns are inferred for the gate
    text = {col: str for col, kind in schema.columns.items() if kind == "string"}
    return pd.read_csv(io.BytesIO(data), low_memory=False, dtype=text)


def _read_parquet(data: bytes, schema: SchemaConfig) -> pd.DataFrame:
    import pandas as pd

    df = pd.read_parquet(io.BytesIO(data))
    # a named index written by pandas is data (e.g. an id column); a plain row index is not
    named = any(name is not None for name in df.index.names)
    return df.reset_index(drop=not named)


def _read_jsonl(data: bytes, schema: SchemaConfig) -> pd.DataFrame:
    import pandas as pd

    # JSON carries its own types: no guessing numbers or dates from text, no int-looking floats turned int
    return pd.read_json(io.BytesIO(data), lines=True, dtype=False, convert_dates=False)


#: format (``source.format``) -> reader of a whole file's bytes, given the declared schema
_READERS: dict[str, Callable[[bytes, SchemaConfig], pd.DataFrame]] = {
    "csv": _read_csv,
    "parquet": _read_parquet,
    "jsonl": _read_jsonl,
}


def _as_timestamps(values: pd.Series, fmt: str) -> pd.Series:
    """A timestamp column as naive UTC microseconds (as Parquet stores them for Spark); unchanged if it
    does not parse. Text must be ISO 8601; numbers are epoch milliseconds in jsonl only."""
    import pandas as pd

    numbers = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    try:
        if pd.api.types.is_datetime64_any_dtype(values):
            out = values
        elif fmt == "jsonl" and numbers:
            out = pd.to_datetime(values, utc=True, unit="ms")
        else:
            out = pd.to_datetime(values, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        log.warning("column %s does not parse as timestamps; kept as it came for the gate", values.name)
        return values
    if out.dt.tz is not None:
        out = out.dt.tz_convert("UTC").dt.tz_localize(None)
    return out.astype("datetime64[us]")


def _parquet_bytes(df: pd.DataFrame) -> tuple[bytes, pd.DataFrame]:
    """Parquet bytes of ``df``; object columns of mixed types are stored as text (kept for the gate)."""
    import pyarrow as pa

    try:
        return frame_to_parquet_bytes(df), df
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        fixed = df.copy()
        for c in fixed.select_dtypes(include="object").columns:
            fixed[c] = fixed[c].map(lambda v: v if v is None or isinstance(v, str) else str(v))
        return frame_to_parquet_bytes(fixed), fixed


def ingest_batch(
    cfg: PipelineConfig,
    root: DataRoot,
    *,
    partition: str,
    interval: Interval,
    run_id: str,
    source_uri: str | None = None,
    announced: Sequence[Announcement] = (),
) -> dict[str, Any]:
    """Read one batch and write its raw partition (the frame, and the bytes as received); return the manifest.

    :param cfg: the model's pipeline config
    :param root: the data root
    :param partition: partition key (``ds=YYYY-MM-DD`` or ``run=<id>``)
    :param interval: the run's data interval
    :param run_id: the Airflow run id (recorded in the manifest)
    :param source_uri: read from here instead of the landing file of the partition
    :param announced: what the sender announced (a webhook delivery's ``rows``/``sha256``), checked by the gate
    :raises BatchNotFoundError: nothing has landed yet, or not its ``source.manifest_file`` (retryable)
    :raises BatchFormatError: unreadable batch; it is quarantined with a report first
    """
    src = source_uri or landing_uri(cfg, root, partition)
    data = fetch_source(src, cfg, root)
    sidecar = _fetch_manifest_file(cfg, root, src)
    received = RECEIVED_FILE.format(format=cfg.source.format)
    base_manifest: dict[str, Any] = {
        "model": cfg.name,
        "partition": partition,
        "data_interval": {"start": interval.start, "end": interval.end},
        "source_uri": src,
        "source_sha256": sha256_bytes(data),
        "source_bytes": len(data),
        "source_format": cfg.source.format,
        "received_file": received,
        "announced": [a.to_json() for a in announced],
        "run_id": run_id,
    }
    try:
        if sidecar is not None:
            found = _parse_manifest_file(*sidecar)
            base_manifest["announced"] += [found.to_json()] if found else []
        df = read_batch(data, cfg)
    except BatchFormatError as e:
        q_uri = quarantine.quarantine_unreadable(cfg, root, partition, data, base_manifest, str(e))
        raise BatchFormatError(
            f"Batch {cfg.name}/{partition} from {src} could not be read: {e}. It is in quarantine at {q_uri} "
            f"(the file as received: {received}, {QUARANTINE_REPORT}). Next: ask the producer for a valid "
            f"{cfg.source.format} file and re-run the interval, or "
            f"`airloop quarantine reject {cfg.name} {partition} --reason ...`."
        ) from e

    payload, df = _parquet_bytes(df)
    manifest = {
        **base_manifest,
        "rows": len(df),
        "columns": [{"name": str(c), "dtype": str(t)} for c, t in df.dtypes.items()],
        "content_hash": content_hash(df),
        "data_file": DATA_FILE,
    }
    raw_uri = root.raw(cfg.name, partition)
    root.write_partition(raw_uri, {DATA_FILE: payload, received: data}, manifest)
    log.info("ingested %s rows of %s/%s from %s into %s", len(df), cfg.name, partition, src, raw_uri)
    return {**manifest, "uri": raw_uri}


def _fetch_manifest_file(cfg: PipelineConfig, root: DataRoot, src: str) -> tuple[str, bytes] | None:
    """The producer's manifest file next to the batch file (``source.manifest_file``), as ``(uri, bytes)``.

    :raises BatchNotFoundError: it is not there (yet): the producer writes it after the batch (retryable)
    """
    name = cfg.source.manifest_file
    if not name:
        return None
    uri = f"{src.rsplit('/', 1)[0]}/{name}"
    try:
        return uri, fetch_source(uri, cfg, root)
    except BatchNotFoundError:
        raise BatchNotFoundError(
            f"no manifest file {uri} beside the batch {src}: the producer writes it after the batch, so the batch "
            "has not fully landed yet (the task retries); if the producer writes none, unset source.manifest_file"
        ) from None


def _parse_manifest_file(uri: str, data: bytes) -> Announcement | None:
    """What a producer's manifest file announces.

    :raises BatchFormatError: it is not a JSON object, or its ``rows``/``sha256`` are of the wrong form
    """
    try:
        values = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BatchFormatError(f"its manifest file {uri} is not JSON: {e}") from None
    if not isinstance(values, dict):
        raise BatchFormatError(f"its manifest file {uri} must be a JSON object with rows and/or sha256")
    return Announcement.parse(f"manifest {uri}", values, f"manifest {uri}")
