"""MLflow's scoring protocol: request bodies to a DataFrame, with a 4xx that says why for bad requests.

Accepted, as ``mlflow models serve`` accepts them: ``application/json`` with one of ``dataframe_split``,
``dataframe_records``, ``instances`` or ``inputs``; ``text/csv`` with a header row.

A body is bounded before it is turned into a table: its size, its JSON nesting (checked on the bytes, so a
deeply nested body never reaches the recursive JSON decoder), its rows and its columns. ``NaN`` and
``Infinity`` (which Python's decoder accepts though JSON has no such literals) become infinities, which
the schema check refuses with the column's name (:mod:`airloop.serving.inputs`).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

JSON_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
#: the deepest JSON a request may nest: ``{"dataframe_split": {"data": [[...]]}}`` is 4
MAX_JSON_DEPTH = 16
#: the most columns a request may carry (a model reads tens)
MAX_COLUMNS = 1024

_INNERMOST = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class RequestError(Exception):
    """A client error: ``status`` is the HTTP status (400, 413, 415), the message says what to fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Table:
    """A request's table as it arrived: one 1-D numpy array per column (JSON values as objects, CSV columns as
    pandas reads them), before any check (:mod:`airloop.serving.inputs` checks and converts)."""

    columns: dict[str, np.ndarray[Any, Any]]
    rows: int

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> Table:
        if not df.columns.is_unique:
            repeated = sorted({str(c)[:40] for c in df.columns[df.columns.duplicated()]})
            raise RequestError(400, f"columns {repeated} appear more than once; send each column once")
        return cls({str(c): df[c].to_numpy() for c in df.columns}, len(df))

    def frame(self) -> pd.DataFrame:
        """The table as a DataFrame, its types inferred as pandas infers them."""
        import pandas as pd

        return pd.DataFrame({c: list(v) for c, v in self.columns.items()})


def parse_request(
    body: bytes,
    content_type: str,
    max_bytes: int,
    max_rows: int | None = None,
    text_columns: Collection[str] = (),
) -> pd.DataFrame:
    """Turn a scoring request into a DataFrame (see :func:`parse_table`)."""
    return parse_table(body, content_type, max_bytes, max_rows, text_columns).frame()


def parse_table(
    body: bytes,
    content_type: str,
    max_bytes: int,
    max_rows: int | None = None,
    text_columns: Collection[str] = (),
) -> Table:
    """Turn a scoring request into a :class:`Table`.

    :param max_rows: more rows than this: 413 (a CSV body is read no further than one row past it)
    :param text_columns: CSV columns read as text (a CSV has no types: ``9E`` stays a carrier code and
        ``007`` keeps its zeros); JSON carries its own types
    :raises RequestError: 413 over ``max_bytes`` or ``max_rows``, 415 for other content types, 400 for
        malformed bodies (and JSON nested deeper than :data:`MAX_JSON_DEPTH`)
    """
    if len(body) > max_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is {max_bytes}")
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "text/csv":
        table = _csv(body, max_rows, text_columns)
    elif ctype == "application/json":
        table = _json(body, max_rows)
    else:
        raise RequestError(
            415, f"unsupported content type {content_type[:80] or '(none)'!r}; send application/json or text/csv"
        )
    _check_rows(table.rows, max_rows)
    return table


def _check_rows(rows: int, max_rows: int | None) -> None:
    if max_rows is not None and rows > max_rows:
        raise RequestError(
            413, f"the request has {rows} rows; the limit is {max_rows} per request: split it into smaller requests"
        )


def _csv(body: bytes, max_rows: int | None, text_columns: Collection[str]) -> Table:
    import pandas as pd

    try:
        df = pd.read_csv(
            io.BytesIO(body),
            nrows=None if max_rows is None else max_rows + 1,
            dtype=dict.fromkeys(text_columns, str) or None,
        )
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, OverflowError) as e:
        raise RequestError(400, f"malformed CSV: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if df.empty:
        raise RequestError(400, "the CSV body has a header but no rows")
    _check_columns(len(df.columns))
    return Table.from_frame(df)


def _json(body: bytes, max_rows: int | None) -> Table:
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise RequestError(
            400, f"the JSON body nests {depth} levels deep; the limit is {MAX_JSON_DEPTH} (a table needs 4)"
        )
    try:
        doc = json.loads(body, parse_constant=lambda _: math.inf)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise RequestError(400, f"malformed JSON: {str(e)[:200]}") from None
    if not isinstance(doc, dict):
        raise RequestError(400, f"the JSON body must be an object with one of {list(JSON_KEYS)}")
    keys = [k for k in JSON_KEYS if k in doc]
    if len(keys) != 1:
        found = sorted(str(k)[:40] for k in doc)[:10]
        raise RequestError(400, f"the JSON body must have exactly one of {list(JSON_KEYS)}; found {found}")
    return _table(keys[0], doc[keys[0]], max_rows)


def json_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep ``body`` nests arrays and objects (brackets inside strings do not count), up to ``limit + 1``
    (deeper, or brackets that do not pair, which no valid JSON has). Counted on the bytes with C-speed
    string operations, so a body nested too deeply for the recursive decoder is measured without decoding it:
    escapes are dropped, then strings, then all but the brackets; each pass then removes one level of
    innermost pairs."""
    opens = body.count(b"[") + body.count(b"{")
    if opens <= limit:
        return opens
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in body else body
    text = b"".join(text.split(b'"')[::2]).translate(None, _NOT_BRACKETS)  # even parts lie outside strings
    for depth in range(limit + 1):
        if not text:
            return depth
        text = _INNERMOST.sub(b"", text)
    return limit if not text else limit + 1


def _table(key: str, value: Any, max_rows: int | None) -> Table:
    """The table of a JSON body's ``key``: rows (``dataframe_split``, a list of row objects) or columns (an
    object of column lists), each column gathered into one object array."""
    if key == "dataframe_split":
        columns = _split(value, max_rows)
    elif isinstance(value, list):
        if key not in ("dataframe_records", "instances", "inputs") or not all(isinstance(r, dict) for r in value):
            raise RequestError(400, f"{key} must be a list of objects (one per row, column -> value)")
        _check_rows(len(value), max_rows)
        names = list(dict.fromkeys(itertools.chain.from_iterable(value)))
        _check_columns(len(names))
        columns = {c: [r.get(c) for r in value] for c in names}
    elif isinstance(value, dict) and key in ("instances", "inputs"):
        columns = _columnar(key, value, max_rows)
    else:
        raise RequestError(
            400,
            f"{key} must be a list of row objects"
            + (" or an object of columns" if key in ("instances", "inputs") else ""),
        )
    rows = len(next(iter(columns.values()))) if columns else 0
    if rows == 0:
        raise RequestError(400, f"{key} holds no rows (or no columns)")
    return Table({c: _objects(v, rows) for c, v in columns.items()}, rows)


def _split(value: Any, max_rows: int | None) -> dict[str, Any]:
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("columns"), list)
        or not isinstance(value.get("data"), list)
    ):
        raise RequestError(400, "dataframe_split needs 'columns' (a list of names) and 'data' (a list of rows)")
    names, data = value["columns"], value["data"]
    _check_rows(len(data), max_rows)
    _check_columns(len(names))
    if not all(isinstance(c, str) for c in names):
        raise RequestError(400, "dataframe_split: every column name must be a string")
    if len(set(names)) != len(names):
        repeated = sorted({c[:40] for c in names if names.count(c) > 1})
        raise RequestError(400, f"columns {repeated} appear more than once; send each column once")
    width = len(names)
    if not all(isinstance(r, list) and len(r) == width for r in data):
        raise RequestError(
            400, f"dataframe_split: every row of 'data' must be a list of {width} values, one per column"
        )
    return dict(zip(names, zip(*data, strict=True), strict=True)) if data else dict.fromkeys(names, ())


def _columnar(key: str, value: dict[str, Any], max_rows: int | None) -> dict[str, Any]:
    _check_columns(len(value))
    lists = [isinstance(v, list) for v in value.values()]
    if not any(lists):  # one row: column -> value
        return {c: [v] for c, v in value.items()}
    lengths = {len(v) for v in value.values() if isinstance(v, list)}
    if not all(lists) or len(lengths) != 1:
        raise RequestError(400, f"{key} in columnar form needs one list of values per column, all of one length")
    _check_rows(lengths.pop(), max_rows)
    return value


def _objects(values: Any, rows: int) -> np.ndarray[Any, Any]:
    """A 1-D object array of the values as they are (a list stays one cell, never a second dimension)."""
    import numpy as np

    return np.fromiter(values, dtype=object, count=rows)


def _check_columns(n: int) -> None:
    if n > MAX_COLUMNS:
        raise RequestError(400, f"the request has {n} columns; the limit is {MAX_COLUMNS}")
