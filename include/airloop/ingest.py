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

A batch is stored as ``raw/<model>/<partition>/data.parquet`` with ``_manifest.json`` (rows, columns,
content hash, source URI and hash, data interval, run id). Whatever the format, the same rows give the same
stored frame and content hash: timestamps become naive UTC microseconds.
Re-ingesting an interval replaces its partition: rows are never duplicated. A file that cannot be read
in its declared format goes straight to quarantine with a report.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fsspec

from airloop import quarantine
from airloop.config import PipelineConfig, SchemaConfig
from airloop.errors import BatchFormatError, BatchNotFoundError
from airloop.storage import DATA_FILE, QUARANTINE_REPORT, DataRoot, content_hash, frame_to_parquet_bytes, sha256_bytes

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


def fetch_source(uri: str, max_bytes: int) -> bytes:
    """Read a batch from any fsspec URI, refusing files over ``max_bytes``."""
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise BatchNotFoundError(
            f"no batch at {uri}: the upstream feed has not delivered it yet (the task retries), "
            "or the source_uri in the run conf is wrong"
        )
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
    for col in cfg.data_schema.timestamp_columns:
        if col in df.columns:
            df[col] = _as_timestamps(df[col], fmt)
    return df


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
) -> dict[str, Any]:
    """Read one batch and write its raw partition; return the manifest.

    :param cfg: the model's pipeline config
    :param root: the data root
    :param partition: partition key (``ds=YYYY-MM-DD`` or ``run=<id>``)
    :param interval: the run's data interval
    :param run_id: the Airflow run id (recorded in the manifest)
    :param source_uri: read from here instead of the landing file of the partition
    :raises BatchNotFoundError: nothing has landed yet (retryable)
    :raises BatchFormatError: unreadable batch; it is quarantined with a report first
    """
    src = source_uri or landing_uri(cfg, root, partition)
    data = fetch_source(src, cfg.source.max_bytes)
    base_manifest: dict[str, Any] = {
        "model": cfg.name,
        "partition": partition,
        "data_interval": {"start": interval.start, "end": interval.end},
        "source_uri": src,
        "source_sha256": sha256_bytes(data),
        "source_bytes": len(data),
        "source_format": cfg.source.format,
        "run_id": run_id,
    }
    try:
        df = read_batch(data, cfg)
    except BatchFormatError as e:
        q_uri = quarantine.quarantine_unreadable(cfg, root, partition, data, base_manifest, str(e))
        raise BatchFormatError(
            f"Batch {cfg.name}/{partition} from {src} could not be read: {e}. It is in quarantine at {q_uri} "
            f"(source file, {QUARANTINE_REPORT}). Next: ask the producer for a valid {cfg.source.format} file "
            f"and re-run the interval, or `airloop quarantine reject {cfg.name} {partition} --reason ...`."
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
    root.write_partition(raw_uri, {DATA_FILE: payload}, manifest)
    log.info("ingested %s rows of %s/%s from %s into %s", len(df), cfg.name, partition, src, raw_uri)
    return {**manifest, "uri": raw_uri}
