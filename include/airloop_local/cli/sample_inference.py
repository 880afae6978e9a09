"""What ``airloop model init`` learns from a sample batch: its format and schema (timestamps included), the
columns that likely leak the outcome, the task and gate, starter features and data checks, and the YAML."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airloop_local.cli.common import UsageError

#: sample file extensions and the source.format they map to
SAMPLE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
#: words in a column name that hint at a timestamp (so do the endings _at and _ts)
TIMESTAMP_HINTS = ("date", "time")
#: |r| (Pearson or rank) with the target above which a column is flagged as likely leakage
LEAKAGE_CORRELATION = 0.95
#: a starter null check allows this much more missing share than the sample shows
NULL_MARGIN = 0.1
#: a string column with at most this many distinct values gets a value-set check
MAX_VALUE_SET = 20


@dataclass(frozen=True)
class InitRequest:
    """What ``airloop model init`` was asked for.

    :param name: the new model's name
    :param sample: a representative batch (.csv, .parquet or .jsonl)
    :param target: the column the model predicts
    :param task: ``regression`` or ``binary_classification``; None: chosen from the target's values
    :param positive_above: binary classification: the label is ``target > positive_above``
    """

    name: str
    sample: Path
    target: str
    task: str | None = None
    positive_above: float | None = None


@dataclass(frozen=True)
class Draft:
    """What the sample says about a new model: its rows (timestamps parsed), column types, timestamp columns,
    columns flagged as leakage (with why), feature entries, task (type, positive_above, target) and notes."""

    sample: Any
    columns: dict[str, str]
    timestamps: list[str]
    flagged: dict[str, str]
    features: list[dict[str, Any]]
    task: tuple[str, float | None, str]
    notes: list[str]


def draft_model(request: InitRequest) -> Draft:
    """Infer a new model from its sample; a UsageError when the sample or the options cannot make one."""
    from airloop.features import label as make_label

    raw = read_sample(request.sample)
    columns, timestamps, notes = infer_schema(raw, sample_format(request.sample))
    check_target(raw, columns, request.target)
    sample = parse_timestamps(raw, timestamps)
    task = choose_task(request, numeric_target(sample, request.target), columns[request.target] == "bool")
    label = make_label(sample, request.target, task[1]) if task[1] is not None else None
    flagged = flag_leakage(sample, columns, request.target, label)
    features, more = feature_entries(columns, timestamps, {request.target, *flagged})
    if not features:
        raise UsageError(f"every column of {request.sample} is the target or flagged as leakage; no features are left")
    return Draft(sample, columns, timestamps, flagged, features, task, notes + more)


def model_yaml(request: InitRequest, draft: Draft) -> str:
    """The new model's YAML: the header comment, then the config."""
    return config_header(request, draft) + yaml_dump(config_doc(request, draft))


def sample_format(path: Path) -> str:
    """The source.format of a sample file, from its extension; a UsageError when unknown or missing."""
    fmt = SAMPLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"{path}: cannot tell the sample's format from {path.suffix or 'no extension'!r}; "
            f"name it {', '.join(sorted(SAMPLE_FORMATS))}"
        )
    if not path.is_file():
        raise UsageError(f"sample {path} not found")
    return fmt


def read_sample(path: Path) -> Any:
    """The sample as ingestion reads a batch of its format, before any column is declared a timestamp."""
    import pandas as pd

    fmt = sample_format(path)
    try:
        if fmt == "csv":
            df = pd.read_csv(path, low_memory=False)
        elif fmt == "parquet":
            df = pd.read_parquet(path)
            df = df.reset_index(drop=all(name is None for name in df.index.names))
        else:  # JSON keeps its own types, as ingestion reads it
            df = pd.read_json(path, lines=True, dtype=False, convert_dates=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, OSError) as e:
        raise UsageError(f"sample {path} is not a readable {fmt} file: {type(e).__name__}: {e}") from None
    if df.empty:
        raise UsageError(f"sample {path} has no rows; a sample needs rows to infer types, ranges and leakage from")
    bad = [c for c in df.columns if not isinstance(c, str) or not c]
    if bad:
        raise UsageError(f"sample {path} has columns without a text name: {bad}")
    return df


def read_sample_as_batch(cfg: Any, path: Path) -> Any:
    """The sample as ingestion would store it for this model (timestamps parsed), whatever its format."""
    from airloop.ingest import read_batch

    fmt = sample_format(path)
    as_batch = cfg.model_copy(update={"source": cfg.source.model_copy(update={"format": fmt})})
    return read_batch(path.read_bytes(), as_batch)


def _name_hints_time(name: str) -> bool:
    return any(h in name.lower() for h in TIMESTAMP_HINTS) or name.lower().endswith(("_at", "_ts"))


def _epoch_millis(name: str, values: Any, fmt: str) -> bool:
    """jsonl only: integers named like a time, in the range of epoch milliseconds (1973 to 2286), as
    pandas' ``to_json`` writes timestamps (ingestion reads them so)."""
    values = values.dropna()
    return (
        fmt == "jsonl"
        and _name_hints_time(name)
        and not values.empty
        and bool(((values > 1e11) & (values < 1e13)).all())
    )


def _timestamp_verdict(name: str, values: Any) -> tuple[bool, str]:
    """Whether an object column holds timestamps: every value parses as ISO 8601, as ingestion parses
    them (and, without a name hint, the values look like dates). Returns (verdict, note)."""
    import pandas as pd

    values = values.dropna()
    if values.empty or not all(isinstance(v, str) for v in values):
        return False, ""
    parsed = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
    share = float(parsed.notna().mean())
    hinted = _name_hints_time(name)
    looks = values.str.contains(r"^\d{4}-\d{2}-\d{2}", regex=True).mean() >= 0.99
    if share == 1.0 and (hinted or looks):
        return True, ""
    if share >= 0.9 and (hinted or looks):
        bad = values[parsed.isna()]
        return False, (
            f"{name} looks like a timestamp, but {len(bad)} of {len(values)} values do not parse as "
            f"ISO 8601 (e.g. {bad.iloc[0]!r}); typed string: clean them upstream, then declare it one"
        )
    return False, ""


def infer_schema(df: Any, fmt: str) -> tuple[dict[str, str], list[str], list[str]]:
    """(column -> declared type, timestamp columns, notes) of a sample of format ``fmt``."""
    from pandas.api import types as pt

    columns: dict[str, str] = {}
    timestamps, notes = [], []
    for c in df.columns:
        s = df[c]
        if pt.is_bool_dtype(s):
            columns[c] = "bool"
        elif pt.is_integer_dtype(s):
            columns[c] = "timestamp" if _epoch_millis(c, s, fmt) else "int"
        elif pt.is_float_dtype(s):
            columns[c] = "float"
        elif pt.is_datetime64_any_dtype(s):
            columns[c] = "timestamp"
        else:
            is_ts, note = _timestamp_verdict(c, s)
            columns[c] = "timestamp" if is_ts else "string"
            notes += [note] if note else []
        if columns[c] == "timestamp":
            timestamps.append(c)
    return columns, timestamps, notes


def parse_timestamps(df: Any, timestamps: list[str]) -> Any:
    import pandas as pd

    df = df.copy()
    for c in timestamps:
        if pd.api.types.is_integer_dtype(df[c]):
            df[c] = pd.to_datetime(df[c], unit="ms", utc=True).dt.tz_localize(None)
        elif not pd.api.types.is_datetime64_any_dtype(df[c]):
            df[c] = pd.to_datetime(df[c], utc=True, format="ISO8601").dt.tz_localize(None)
        elif df[c].dt.tz is not None:
            df[c] = df[c].dt.tz_convert("UTC").dt.tz_localize(None)
    return df


def _correlation(x: Any, y: Any, method: str = "pearson") -> float | None:
    ok = x.notna() & y.notna()
    if ok.sum() < 10 or x[ok].nunique() < 2 or y[ok].nunique() < 2:
        return None
    return float(x[ok].corr(y[ok], method=method))


def _separation(x: Any, label: Any) -> float | None:
    """How well ``x`` alone orders the label: its ROC AUC folded to [0.5, 1] (1: it separates perfectly)."""
    ok = x.notna() & label.notna()
    positives = label[ok] == 1
    n1, n0 = int(positives.sum()), int((~positives).sum())
    if n1 < 5 or n0 < 5:
        return None
    ranks = x[ok].rank()
    auc = (float(ranks[positives].sum()) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return max(auc, 1 - auc)


def _missing_with_target(x: Any, y: Any, target: str) -> str | None:
    """A column missing (nearly) only where the target is, and on most of those rows, is likely recorded
    together with the outcome (e.g. times of an event that did not happen)."""
    both = int((x.isna() & y.isna()).sum())
    if x.isna().sum() < 3 or both < 0.95 * x.isna().sum() or both < 0.5 * y.isna().sum():
        return None
    return f"missing where {target} is missing ({both} of its {int(y.isna().sum())} missing rows)"


def _leak_reason(x: Any, y: Any, target: str, label: Any) -> str | None:
    """Why a column looks derived from the outcome, or None."""
    why = _missing_with_target(x, y, target)
    if why or x.dtype == object or str(x.dtype).startswith("datetime"):
        return why
    x = x.astype("float64")
    for method, sign in (("pearson", "r"), ("spearman", "rank r")):
        r = _correlation(x, y, method)
        if r is not None and abs(r) > LEAKAGE_CORRELATION:
            return f"|{sign}| = {abs(r):.3f} with {target}"
    auc = _separation(x, label) if label is not None else None
    if auc is not None and auc >= 0.99:
        return f"it alone separates the label (ROC AUC {auc:.3f})"
    return None


def _sum_leaks(df: Any, numeric: list[str], y: Any, target: str) -> dict[str, str]:
    """Pairs of columns whose sum or difference equals the target on (nearly) every row."""
    import itertools

    import numpy as np

    out: dict[str, str] = {}
    varying = [c for c in numeric if df[c].nunique(dropna=True) > 1]
    rows = df[varying].astype("float64").head(5000)
    t = y.head(5000).to_numpy(float)
    tol = 1e-6 * max(float(np.nanmax(np.abs(t))) if np.isfinite(t).any() else 1.0, 1.0)
    for a, b in itertools.combinations(varying, 2):
        xa, xb = rows[a].to_numpy(), rows[b].to_numpy()
        for label, value in ((f"{a} + {b}", xa + xb), (f"{a} - {b}", xa - xb), (f"{b} - {a}", xb - xa)):
            ok = np.isfinite(value) & np.isfinite(t)
            if ok.sum() >= 10 and np.mean(np.abs(value[ok] - t[ok]) <= tol) >= 0.99:
                for c in (a, b):
                    out.setdefault(c, f"{label} equals {target}")
    return out


def flag_leakage(df: Any, columns: dict[str, str], target: str, label: Any) -> dict[str, str]:
    """Columns that likely leak the outcome, with the reason: the target's name in theirs, missing where
    the target is missing, |r| (or rank r) above :data:`LEAKAGE_CORRELATION` with the target, a label it
    alone separates, or a sum or difference of two columns equal to the target."""
    import pandas as pd

    flagged = {
        c: f"its name contains the target's name {target!r}"
        for c in columns
        if c != target and target.lower() in c.lower()
    }
    y = pd.to_numeric(df[target], errors="coerce").astype("float64")
    for c, ty in columns.items():
        why = (
            None
            if c in flagged or c == target
            else _leak_reason(df[c] if ty != "bool" else df[c].astype(float), y, target, label)
        )
        if why:
            flagged[c] = why
    # pairs among all numeric columns: a flagged column's partner in a sum is a leak as well
    numeric = [c for c, ty in columns.items() if ty in ("int", "float") and c != target]
    for c, why in _sum_leaks(df, numeric, y, target).items():
        flagged.setdefault(c, why)
    return flagged


def feature_entries(
    columns: dict[str, str], timestamps: list[str], excluded: set[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Vocabulary entries for every column not excluded: numbers as they are, text and booleans
    categorical, timestamps their day of week and hour. Returns (entries, notes)."""
    entries: list[dict[str, Any]] = []
    notes: list[str] = []
    for c, ty in columns.items():
        if c in excluded:
            continue
        if c in timestamps:
            made = [
                {"name": f"{c}_{part}", "transform": "date_part", "column": c, "part": part}
                for part in ("dayofweek", "hour")
            ]
        elif ty in ("int", "float"):
            made = [{"name": c}]
        else:
            made = [{"name": c, "transform": "categorical"}]
        for entry in made:
            if any(e["name"] == entry["name"] for e in entries):
                notes.append(f"feature {entry['name']!r} of {c} left out: another feature has that name")
            else:
                entries.append(entry)
    return entries, notes


def _nice(x: float, up: bool) -> float:
    """``x`` rounded outward (up or down) to two significant digits of its magnitude."""
    import math

    if x == 0 or not math.isfinite(x):
        return x
    step: float = 10 ** (math.floor(math.log10(abs(x))) - 1)
    n = math.ceil(x / step) if up else math.floor(x / step)
    return round(n * step, max(0, -math.floor(math.log10(step))))


def _range_expectation(c: str, s: Any, ty: str) -> dict[str, Any] | None:
    import math

    values = s.dropna().astype("float64")
    if values.empty:
        return None
    lo, hi = float(values.min()), float(values.max())
    margin = (hi - lo) * 0.1 or max(abs(hi) * 0.1, 1.0)
    low, high = _nice(lo - margin, up=False), _nice(hi + margin, up=True)
    why = f"the sample's range [{lo:g}, {hi:g}] widened by a margin"
    if lo >= 0 > low:
        low, why = 0.0, why + " (not below 0: the sample has no negative value)"
    if ty == "int":
        low, high = math.floor(low), math.ceil(high)
    return {
        "type": "expect_column_values_to_be_between",
        "kwargs": {"column": c, "min_value": low, "max_value": high},
        "meta": {"why": why},
    }


def _column_expectations(c: str, s: Any, ty: str) -> list[dict[str, Any]]:
    """Starter checks of one column the sample passes: nulls, a range, a value set."""
    import math

    exps: list[dict[str, Any]] = []
    present = float(s.notna().mean())
    if present == 1.0:
        exps.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": c}})
    elif present - NULL_MARGIN > 0:
        mostly = math.floor((present - NULL_MARGIN) * 100) / 100
        exps.append(
            {
                "type": "expect_column_values_to_not_be_null",
                "kwargs": {"column": c, "mostly": mostly},
                "meta": {"why": f"{present:.1%} of the sample's values are present"},
            }
        )
    if ty in ("int", "float"):
        exps += [e for e in [_range_expectation(c, s, ty)] if e]
    values = s.dropna().unique().tolist()
    if (
        ty == "string"
        and values
        and all(isinstance(v, str) for v in values)
        and len(values) <= MAX_VALUE_SET
        and len(values) <= 0.5 * s.notna().sum()
    ):
        exps.append(
            {
                "type": "expect_column_values_to_be_in_set",
                "kwargs": {"column": c, "value_set": sorted(values)},
                "meta": {"why": "the values seen in the sample; a new one needs a look before it is trained on"},
            }
        )
    return exps


def suite_text(name: str, df: Any, columns: dict[str, str], sample: Path) -> str:
    """A GX 1.x suite JSON of starter checks, one expectation per line."""
    exps = [e for c, ty in columns.items() for e in _column_expectations(c, df[c], ty)]
    notes = (
        f"Starter data checks written by `airloop model init` from {sample.name} ({len(df)} rows): null shares, "
        "ranges widened by a margin, value sets of few-valued text columns. Tighten them with what you know. "
        "Column presence, types and the minimum row count are generated from the pipeline config's schema."
    )
    body = ",\n".join("    " + json.dumps(e) for e in exps)
    return (
        f'{{\n  "name": {json.dumps(name)},\n  "meta": {{"notes": {json.dumps(notes)}}},\n'
        f'  "expectations": [\n{body}\n  ]\n}}\n'
    )


class _Flow(dict[str, Any]):
    """A mapping written on one line ({name: x, transform: y})."""


class _FlowList(list[Any]):
    """A list written on one line ([a, b])."""


def yaml_dump(doc: dict[str, Any]) -> str:
    """``doc`` as YAML in the order given, ``_Flow``/``_FlowList`` values on one line."""
    import yaml

    Dumper: Any = type("Dumper", (yaml.SafeDumper,), {})
    Dumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))
    Dumper.add_representer(_FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
    return str(yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=110, allow_unicode=True))


def choose_task(request: InitRequest, y: Any, is_bool: bool) -> tuple[str, float | None, str]:
    """(task type, positive_above, task.target) from the options and the sample's target values."""
    values = set(y.dropna().unique().tolist())
    zero_one = is_bool or values <= {0, 1}
    task = request.task or ("binary_classification" if zero_one or request.positive_above is not None else "regression")
    if len(values) < 2:
        raise UsageError(
            f"the sample's target {request.target!r} has {len(values)} distinct value(s); a model needs "
            "a sample whose target varies"
        )
    if task == "regression":
        if request.positive_above is not None:
            raise UsageError("--positive-above is only for --task binary_classification (label = target > X)")
        return task, None, request.target
    above = request.positive_above if request.positive_above is not None else (0.5 if zero_one else None)
    if above is None:
        raise UsageError(f"binary_classification needs --positive-above X: the label is {request.target} > X")
    label = y > above
    if label[y.notna()].nunique() < 2:
        raise UsageError(
            f"{request.target} > {above:g} is the same for every row of the sample; choose another "
            "--positive-above, or a sample with both outcomes"
        )
    suffix = f"{above:g}".replace("-", "minus").replace(".", "_")
    return task, float(above), request.target if zero_one else f"{request.target}_above_{suffix}"


def _gate_for(task: str, y: Any) -> dict[str, Any]:
    """A starter gate: RMSE within twice the target's spread, or ROC AUC above chance."""
    if task == "regression":
        std = float(y.std())
        return {"metric": "rmse", "min_metric": _nice(2 * std, up=True), "max_regression": _nice(0.02 * std, up=True)}
    return {"metric": "roc_auc", "min_metric": 0.55, "max_regression": 0.01}


def config_doc(request: InitRequest, draft: Draft) -> dict[str, Any]:
    """The pipeline config of a new model, as a mapping in the order a person reads it."""
    kind, above, target_name = draft.task
    sample, timestamps = draft.sample, draft.timestamps
    fmt = sample_format(request.sample)
    event_time = timestamps[0] if timestamps else None
    start = sample[event_time].min().date() if event_time and sample[event_time].notna().any() else dt.date.today()
    label: dict[str, Any] = {"source_column": request.target}
    if above is not None:
        label["positive_above"] = above
    what = f"{request.target} > {above:g}" if above is not None else request.target
    schema: dict[str, Any] = {"columns": draft.columns}
    if timestamps:
        schema |= {"timestamp_columns": _FlowList(timestamps), "event_time": event_time}
    schema["leakage_columns"] = _FlowList([request.target, *draft.flagged])
    return {
        "name": request.name,
        "description": f"Predicts {what} ({kind.replace('_', ' ')}); written by `airloop model init` from "
        f"{request.sample.name}: describe the model here.",
        "owner": "airloop",
        "tags": _FlowList(["generated", kind.replace("_", "-")]),
        "task": {"type": kind, "target": target_name, "label": label},
        "source": {"kind": "files", "format": fmt, "file_name": f"batch.{fmt}"},
        "schedule": {"cron": "@daily", "start_date": start, "catchup": False},
        "schema": schema,
        "validation": {"suite": f"{request.name}.json", "min_rows": 1},
        "features": {"columns": [_Flow(f) for f in draft.features]},
        "gate": _gate_for(kind, numeric_target(sample, request.target)),
    }


def numeric_target(df: Any, target: str) -> Any:
    """The target column as floats (NaN where a value is not a number)."""
    import pandas as pd

    return pd.to_numeric(df[target], errors="coerce").astype("float64")


def config_header(request: InitRequest, draft: Draft) -> str:
    """The comment above a new model's YAML: where it came from, and the columns flagged as leakage."""
    flagged = draft.flagged
    lines = [
        f"# Written by `airloop model init` from {request.sample.name} ({len(draft.sample)} rows): a starting point "
        "to review.",
        "# Every setting not written here has its default (see include/airloop/config.py).",
    ]
    if flagged:
        lines.append("# Flagged as likely leakage (known only with the outcome), so left out of the features: confirm,")
        lines.append("# or move a column back into features and out of schema.leakage_columns:")
        lines += [f"#   {c}: {why}" for c, why in flagged.items()]
    return "\n".join(lines) + "\n"


def check_target(df: Any, columns: dict[str, str], target: str) -> None:
    """A UsageError unless ``target`` is a numeric (or boolean) column of the sample."""
    if target not in columns:
        raise UsageError(f"--target {target!r} is not a column of the sample; its columns: {list(columns)}")
    if columns[target] not in ("int", "float", "bool"):
        example = df[target].dropna().iloc[0] if df[target].notna().any() else None
        raise UsageError(
            f"--target {target!r} is {columns[target]} (e.g. {example!r}); the label source must be a "
            "number (or 0/1, true/false): convert it upstream or choose a numeric column"
        )


def check_declared_types(cfg: Any, batch: Any) -> None:
    """Raise ValueError when ingestion would store a column with another type than the schema declares
    (the gate's type check would then refuse every batch like the sample)."""
    from airloop.validation import TYPE_LISTS

    wrong = {
        c: str(batch[c].dtype) for c, ty in cfg.data_schema.columns.items() if str(batch[c].dtype) not in TYPE_LISTS[ty]
    }
    if wrong:
        raise ValueError(f"ingestion reads these columns of the sample with other types than inferred: {wrong}")
