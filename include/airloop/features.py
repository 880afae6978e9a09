"""Feature definitions shared by the batch job (Spark) and serving (the model's pyfunc).

One pandas function, :func:`compute_features`, defines every feature. The Spark job applies it per Arrow
batch with ``mapInPandas``; the logged model applies it to request rows. Both paths therefore run the
same code, and a test checks that the same rows give identical features through both.

Point in time: features use only what is known at scheduled departure (the schedule, the route, the
weather at the origin in the scheduled hour). The columns that leak the outcome (``dep_time``,
``dep_delay``, ``arr_time``, ``arr_delay``, ``air_time``) are never read here; the label is derived
separately by :func:`label`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

#: Columns a request (or a raw batch) must carry for the features to be computed.
SOURCE_COLUMNS = [
    "year", "month", "day", "hour", "minute", "sched_arr_time", "carrier", "origin", "dest", "distance",
    "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib",
]
NUMERIC_FEATURES = [
    "month", "day_of_week", "dep_minute_of_day", "arr_minute_of_day", "log_distance",
    "temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib",
    "wind_dir_sin", "wind_dir_cos",
]
CATEGORICAL_FEATURES = ["carrier", "origin", "dest"]
FEATURE_COLUMNS = NUMERIC_FEATURES + CATEGORICAL_FEATURES
#: Carried through untouched, for ordering, partitioning and joining back.
KEY_COLUMNS = ["time_hour"]


def feature_version() -> str:
    """A short hash of this file: changes whenever a feature definition changes (lineage tag)."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def compute_features(df: pd.DataFrame) -> pd.DataFrame:
    """Features for rows carrying :data:`SOURCE_COLUMNS` (any extra columns are ignored).

    :returns: :data:`FEATURE_COLUMNS` (numeric as float64, categorical as str/None), plus
        :data:`KEY_COLUMNS` when present
    """
    import numpy as np
    import pandas as pd

    missing = [c for c in SOURCE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"cannot compute features: missing input columns {missing}")
    num = {c: pd.to_numeric(df[c], errors="coerce").astype("float64") for c in SOURCE_COLUMNS
           if c not in ("carrier", "origin", "dest")}
    out = pd.DataFrame(index=df.index)
    out["month"] = num["month"]
    dates = pd.to_datetime(
        pd.DataFrame({"year": num["year"], "month": num["month"], "day": num["day"]}), errors="coerce"
    )
    out["day_of_week"] = dates.dt.dayofweek.astype("float64")
    out["dep_minute_of_day"] = num["hour"] * 60.0 + num["minute"]
    arr = num["sched_arr_time"]
    out["arr_minute_of_day"] = np.floor(arr / 100.0) * 60.0 + np.mod(arr, 100.0)
    out["log_distance"] = np.log1p(num["distance"].clip(lower=0))
    for c in ("temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib"):
        out[c] = num[c]
    rad = np.deg2rad(num["wind_dir"])
    out["wind_dir_sin"] = np.sin(rad)
    out["wind_dir_cos"] = np.cos(rad)
    for c in CATEGORICAL_FEATURES:
        out[c] = df[c].astype(object).where(df[c].notna(), None)
    for c in KEY_COLUMNS:
        if c in df.columns:
            out[c] = df[c]
    return out


def label(df: pd.DataFrame, source_column: str, positive_above: float | None) -> pd.Series:
    """The target: ``source > positive_above`` (binary) or the source value (regression); NaN if unknown
    (cancelled or diverted flights have no arrival delay)."""
    import numpy as np
    import pandas as pd

    src = pd.to_numeric(df[source_column], errors="coerce").astype("float64")
    if positive_above is None:
        return src
    return pd.Series(np.where(src.isna(), np.nan, (src > positive_above).astype("float64")), index=df.index)
