"""MLflow's scoring protocol: request bodies to a DataFrame, with a 4xx that says why for bad requests.

Accepted, as ``mlflow models serve`` accepts them: ``application/json`` with one of ``dataframe_split``,
``dataframe_records``, ``instances`` or ``inputs``; ``text/csv`` with a header row.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

JSON_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class RequestError(Exception):
    """A client error: ``status`` is the HTTP status (400, 413, 415), the message says what to fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def parse_request(body: bytes, content_type: str, max_bytes: int) -> pd.DataFrame:
    """Turn a scoring request into a DataFrame.

    :raises RequestError: 413 over ``max_bytes``, 415 for other content types, 400 for malformed bodies
    """
    import pandas as pd

    if len(body) > max_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is {max_bytes}")
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "text/csv":
        try:
            df = pd.read_csv(io.BytesIO(body))
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
            raise RequestError(
                400, f"malformed CSV: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        if df.empty:
            raise RequestError(400, "the CSV body has a header but no rows")
        return df
    if ctype != "application/json":
        raise RequestError(
            415, f"unsupported content type {content_type or '(none)'!r}; send application/json or text/csv"
        )
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"malformed JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RequestError(400, f"the JSON body must be an object with one of {list(JSON_KEYS)}")
    keys = [k for k in JSON_KEYS if k in doc]
    if len(keys) != 1:
        raise RequestError(400, f"the JSON body must have exactly one of {list(JSON_KEYS)}; found {sorted(doc)}")
    return _frame(keys[0], doc[keys[0]])


def _frame(key: str, value: Any) -> pd.DataFrame:
    import pandas as pd

    try:
        if key == "dataframe_split":
            if not isinstance(value, dict) or "columns" not in value or "data" not in value:
                raise RequestError(400, "dataframe_split needs 'columns' and 'data'")
            df = pd.DataFrame(value["data"], columns=value["columns"])
        elif key == "dataframe_records" or (key in ("instances", "inputs") and isinstance(value, list)):
            if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
                raise RequestError(400, f"{key} must be a list of objects (one per row, column -> value)")
            df = pd.DataFrame.from_records(value)
        elif isinstance(value, dict):  # inputs / instances in columnar form
            df = pd.DataFrame(value)
        else:
            raise RequestError(400, f"{key} must be a list of row objects or an object of columns")
    except RequestError:
        raise
    except (ValueError, TypeError) as e:
        raise RequestError(400, f"{key} does not form a table: {e}") from None
    if df.empty:
        raise RequestError(400, f"{key} holds no rows")
    return df
