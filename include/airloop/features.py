"""Feature definitions, declared in each model's config and shared by every stage.

A model's ``features`` block is either a list of column transforms from a small vocabulary (this module's
:data:`TRANSFORMS`), or ``module: package.module:function``, a pandas function of the team's own. Either
way :func:`compute_features` is the one definition: the Spark job applies it per Arrow batch with
``mapInPandas``, training applies it through the feature partitions, the logged pyfunc applies it to
request rows, and the drift check applies it to logged requests. :func:`feature_version` hashes it.

The vocabulary (each entry: ``name``, ``transform``, and the transform's parameters)::

    numeric       column (default: name), optional min/max clip      float
    log1p         log(1 + x) of column, clipped below at min (default 0)
    clip          column clipped to [min, max]
    cyclical      sin and cos of 2*pi*x/period: two features <name>_sin, <name>_cos
    hhmm_minutes  a clock time written HHMM (e.g. 915) -> minutes after midnight (555)
    date_part     part (dayofweek, month, day, dayofyear, hour, year) of a timestamp column, or of
                  columns [year, month, day]
    arithmetic    expr over columns and numbers with + - * / and parentheses, e.g. "hour * 60 + minute"
    categorical   column as text; values unseen (or rare) in training share one unknown bucket

The block's models (:class:`FeaturesConfig`, :class:`FeatureColumnConfig`) live here, next to the vocabulary
that validates them; :mod:`airloop.config` composes them into a pipeline config.

Adding a transform is one function plus one :func:`transform` registration line.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import pandas as pd

NUMERIC, CATEGORICAL = "numeric", "categorical"
DATE_PARTS = ("dayofweek", "month", "day", "dayofyear", "hour", "year")


# --- the ``features`` block of a pipeline config ------------------------------------------------------


class _FrozenSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureColumnConfig(_FrozenSpec):
    """One feature of the vocabulary (:data:`TRANSFORMS`): ``name``, ``transform`` and its parameters."""

    name: str
    transform: str = "numeric"
    column: str | None = Field(default=None, description="the input column (default: name)")
    columns: tuple[str, ...] = Field(default=(), description="date_part: [year, month, day] columns")
    min: float | None = None
    max: float | None = None
    period: float | None = Field(default=None, gt=0, description="cyclical: the period (360 for degrees, 24 for hours)")
    part: str | None = Field(default=None, description="date_part: dayofweek, month, day, dayofyear, hour, year")
    expr: str | None = Field(default=None, description='arithmetic: e.g. "hour * 60 + minute"')

    @model_validator(mode="after")
    def _known_transform(self) -> FeatureColumnConfig:
        check_column_spec(self)
        return self


class FeaturesConfig(_FrozenSpec):
    """The model's features: a list of vocabulary transforms, or ``module: package.module:function``
    (a pandas function; then ``inputs``, ``numeric`` and ``categorical`` declare what it reads and returns)."""

    columns: tuple[FeatureColumnConfig, ...] = ()
    module: str | None = Field(
        default=None, description="package.module:function, installed or in the pipelines folder"
    )
    inputs: tuple[str, ...] = Field(default=(), description="module: the columns it reads (what a request carries)")
    numeric: tuple[str, ...] = Field(default=(), description="module: the numeric features it returns")
    categorical: tuple[str, ...] = Field(default=(), description="module: the categorical features it returns")
    #: numeric features also given a piecewise-linear encoding in ``piecewise_bins`` quantile bins
    piecewise: tuple[str, ...] = ()
    piecewise_bins: int = Field(default=16, ge=2)

    @model_validator(mode="after")
    def _one_definition(self) -> FeaturesConfig:
        if bool(self.columns) == bool(self.module):
            raise ValueError("declare either columns (the vocabulary) or module (a function), exactly one of them")
        if self.module and not (self.inputs and (self.numeric or self.categorical)):
            raise ValueError("with module, declare inputs and the numeric / categorical features it returns")
        if not self.module and (self.inputs or self.numeric or self.categorical):
            raise ValueError("inputs, numeric and categorical are declared only with module")
        names = feature_columns(self)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature names must be unique: {dupes}")
        bad = [c for c in self.piecewise if c not in numeric_features(self)]
        if bad:
            raise ValueError(f"piecewise names {bad}, which are not numeric features ({numeric_features(self)})")
        return self


# --- the vocabulary ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transform:
    """One entry of the vocabulary: its kind, its parameters, and how it reads and computes columns."""

    kind: str
    required: frozenset[str]
    optional: frozenset[str]
    apply: Callable[[Any, Any], dict[str, Any]]  # (DataFrame, FeatureColumnConfig) -> {output name: Series}
    inputs: Callable[[Any], list[str]]
    outputs: Callable[[Any], list[str]]


TRANSFORMS: dict[str, Transform] = {}
_PARAMS = frozenset({"column", "columns", "min", "max", "period", "part", "expr"})


def _column(spec: FeatureColumnConfig) -> list[str]:
    return [spec.column or spec.name]


def _own_name(spec: FeatureColumnConfig) -> list[str]:
    return [spec.name]


def transform(
    name: str,
    kind: str,
    *,
    required: Sequence[str] = (),
    optional: Sequence[str] = (),
    inputs: Callable[[Any], list[str]] = _column,
    outputs: Callable[[Any], list[str]] = _own_name,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a transform under ``name`` (the value of ``transform:`` in a config)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        TRANSFORMS[name] = Transform(kind, frozenset(required), frozenset(optional), fn, inputs, outputs)
        return fn

    return register


def _num(df: pd.DataFrame, column: str) -> pd.Series:
    import pandas as pd

    return pd.to_numeric(df[column], errors="coerce").astype("float64")


def _clipped(df: pd.DataFrame, spec: FeatureColumnConfig, default_min: float | None = None) -> pd.Series:
    col = _num(df, spec.column or spec.name)
    lo = spec.min if spec.min is not None else default_min
    if lo is not None or spec.max is not None:
        col = col.clip(lower=lo, upper=spec.max)
    return col


@transform("clip", NUMERIC, optional=("column", "min", "max"))
@transform("numeric", NUMERIC, optional=("column", "min", "max"))
def _numeric(df: pd.DataFrame, spec: FeatureColumnConfig) -> dict[str, pd.Series]:
    """The value as a number, clipped to ``min`` / ``max`` when given (``clip`` names the same)."""
    return {spec.name: _clipped(df, spec)}


@transform("log1p", NUMERIC, optional=("column", "min"))
def _log1p(df: pd.DataFrame, spec: FeatureColumnConfig) -> dict[str, pd.Series]:
    import numpy as np

    return {spec.name: np.log1p(_clipped(df, spec, default_min=0.0))}


@transform(
    "cyclical",
    NUMERIC,
    required=("period",),
    optional=("column",),
    outputs=lambda s: [f"{s.name}_sin", f"{s.name}_cos"],
)
def _cyclical(df: pd.DataFrame, spec: FeatureColumnConfig) -> dict[str, pd.Series]:
    import numpy as np

    assert spec.period is not None  # required: checked when the config was loaded
    rad = np.deg2rad(_num(df, spec.column or spec.name) * (360.0 / spec.period))
    return {f"{spec.name}_sin": np.sin(rad), f"{spec.name}_cos": np.cos(rad)}


@transform("hhmm_minutes", NUMERIC, optional=("column",))
def _hhmm(df: pd.DataFrame, spec: FeatureColumnConfig) -> dict[str, pd.Series]:
    import numpy as np

    x = _num(df, spec.column or spec.name)
    return {spec.name: np.floor(x / 100.0) * 60.0 + np.mod(x, 100.0)}


def _date_inputs(spec: FeatureColumnConfig) -> list[str]:
    return list(spec.columns) if spec.columns else _column(spec)


@transform("date_part", NUMERIC, required=("part",), optional=("column", "columns"), inputs=_date_inputs)
def _date_part(df: pd.DataFrame, spec: FeatureColumnConfig) -> dict[str, pd.Series]:
    import pandas as pd

    if spec.columns:
        y, m, d = (_num(df, c) for c in spec.columns)
        dates = pd.to_datetime(pd.DataFrame({"year": y, "month": m, "day": d}), errors="coerce")
    else:
        dates = pd.to_datetime(df[spec.column or spec.name], errors="coerce", utc=True).dt.tz_localize(None)
    assert spec.part is not None  # required: checked when the config was loaded
    return {spec.name: getattr(dates.dt, spec.part).astype("float64")}


_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def _expr_columns(spec: FeatureColumnConfig) -> list[str]:
    return sorted({n.id for n in ast.walk(_parse_expr(spec.expr or "")) if isinstance(n, ast.Name)})


def _parse_expr(expr: str) -> ast.expr:
    """Parse an arithmetic expression, allowing only column names, numbers, + - * / and parentheses."""
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"expr {expr!r} is not an arithmetic expression: {e.msg}") from None
    for node in ast.walk(tree):
        ok = (
            isinstance(node, ast.Name | ast.Load | ast.UnaryOp | ast.USub | ast.UAdd)
            or (isinstance(node, ast.BinOp) and type(node.op) in _OPS)
            or type(node) in _OPS
            or (
                isinstance(node, ast.Constant)
                and isinstance(node.value, int | float)
                and not isinstance(node.value, bool)
            )
        )
        if not ok:
            raise ValueError(f"expr {expr!r}: only column names, numbers, + - * / and parentheses are allowed")
    return tree


def _evaluate(node: ast.expr, df: pd.DataFrame) -> Any:
    if isinstance(node, ast.Name):
        return _num(df, node.id)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, df)
        return -value if isinstance(node.op, ast.USub) else value
    assert isinstance(node, ast.BinOp)
    return _OPS[type(node.op)](_evaluate(node.left, df), _evaluate(node.right, df))


@transform("arithmetic", NUMERIC, required=("expr",), inputs=_expr_columns)
def _arithmetic(df: pd.DataFrame, spec: FeatureColumnConfig) -> dict[str, pd.Series]:
    import numpy as np
    import pandas as pd

    value = _evaluate(_parse_expr(spec.expr or ""), df)
    if not isinstance(value, pd.Series):  # a constant expression
        value = pd.Series(float(value), index=df.index)
    return {spec.name: value.astype("float64").replace([np.inf, -np.inf], np.nan)}


def _as_text(v: Any) -> str:
    """One text per category, whichever way it arrived (2, 2.0 and "2" alike)."""
    if isinstance(v, str):
        return v
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


@transform("categorical", CATEGORICAL, optional=("column",))
def _categorical(df: pd.DataFrame, spec: FeatureColumnConfig) -> dict[str, pd.Series]:
    col = df[spec.column or spec.name]
    text = col.map(_as_text, na_action="ignore")
    return {spec.name: text.astype(object).where(col.notna(), None)}


def check_column_spec(spec: FeatureColumnConfig) -> None:
    """Raise ValueError when an entry names an unknown transform or lacks / has extra parameters."""
    t = TRANSFORMS.get(spec.transform)
    if t is None:
        raise ValueError(f"feature {spec.name!r}: unknown transform {spec.transform!r}; known: {sorted(TRANSFORMS)}")
    given = {p for p in _PARAMS if getattr(spec, p) not in (None, ())}
    missing = sorted(t.required - given)
    extra = sorted(given - t.required - t.optional)
    if missing:
        raise ValueError(f"feature {spec.name!r} ({spec.transform}) needs {missing}")
    if extra:
        raise ValueError(
            f"feature {spec.name!r} ({spec.transform}) does not take {extra}; it takes "
            f"{sorted(t.required | t.optional)}"
        )
    if spec.transform == "date_part":
        if spec.part not in DATE_PARTS:
            raise ValueError(f"feature {spec.name!r}: part must be one of {list(DATE_PARTS)}, got {spec.part!r}")
        if spec.columns and len(spec.columns) != 3:
            raise ValueError(f"feature {spec.name!r}: columns must be [year, month, day], got {list(spec.columns)}")
    if spec.transform == "arithmetic":
        _parse_expr(spec.expr or "")
    if spec.transform == "cyclical" and not spec.period:
        raise ValueError(f"feature {spec.name!r}: period must be a positive number")


# --- the model's feature set -------------------------------------------------------------------------


def input_columns(features: FeaturesConfig) -> list[str]:
    """The columns a batch or a scoring request must carry for the features to be computed."""
    if features.module:
        return list(features.inputs)
    out: list[str] = []
    for spec in features.columns:
        for c in TRANSFORMS[spec.transform].inputs(spec):
            if c not in out:
                out.append(c)
    return out


def numeric_features(features: FeaturesConfig) -> list[str]:
    if features.module:
        return list(features.numeric)
    return [
        o
        for s in features.columns
        if TRANSFORMS[s.transform].kind == NUMERIC
        for o in TRANSFORMS[s.transform].outputs(s)
    ]


def categorical_features(features: FeaturesConfig) -> list[str]:
    if features.module:
        return list(features.categorical)
    return [
        o
        for s in features.columns
        if TRANSFORMS[s.transform].kind == CATEGORICAL
        for o in TRANSFORMS[s.transform].outputs(s)
    ]


def feature_columns(features: FeaturesConfig) -> list[str]:
    """Every feature the model sees: numeric first, then categorical."""
    return numeric_features(features) + categorical_features(features)


def load_function(ref: str, search_dirs: Sequence[str | Path] = ()) -> Callable[[Any], Any]:
    """``package.module:function`` from an installed package, or from a module file in ``search_dirs``
    (the pipelines folder)."""
    mod_name, _, fn_name = ref.partition(":")
    if not mod_name or not fn_name:
        raise ValueError(f"features.module must look like package.module:function, got {ref!r}")
    added = [str(d) for d in search_dirs if str(d) not in sys.path]
    sys.path[:0] = added
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(
            f"features.module {ref!r}: cannot import {mod_name!r} ({e}); install the package or put "
            f"{mod_name.replace('.', '/')}.py in the pipelines folder"
        ) from None
    finally:
        for d in added:
            if d in sys.path:
                sys.path.remove(d)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"features.module {ref!r}: {mod_name} has no function {fn_name!r}")
    return fn  # type: ignore[no-any-return]


def module_file(ref: str, search_dirs: Sequence[str | Path] = ()) -> Path | None:
    """The source file of a ``features.module`` function (for the version hash and the logged model)."""
    module = sys.modules.get(ref.partition(":")[0])
    if module is None:
        load_function(ref, search_dirs)
        module = sys.modules.get(ref.partition(":")[0])
    f = getattr(module, "__file__", None)
    return Path(f) if f else None


def compute_features(
    df: pd.DataFrame, features: FeaturesConfig, keep: Sequence[str] = (), search_dirs: Sequence[str | Path] = ()
) -> pd.DataFrame:
    """The model's features for rows carrying :func:`input_columns` (extra columns are ignored).

    :param keep: columns carried through untouched when present (the event time, keys)
    :returns: :func:`feature_columns` (numeric as float64, categorical as str/None), then ``keep``
    """
    import pandas as pd

    needed = input_columns(features)
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"cannot compute features: missing input columns {missing}")
    numeric, categorical = numeric_features(features), categorical_features(features)
    out = pd.DataFrame(index=df.index)
    if features.module:
        made = load_function(features.module, search_dirs)(df[needed].copy())
        absent = [c for c in numeric + categorical if c not in made.columns]
        if absent:
            raise ValueError(f"features.module {features.module} did not return the declared features {absent}")
        for c in numeric:
            out[c] = pd.to_numeric(made[c], errors="coerce").astype("float64")
        for c in categorical:
            out[c] = made[c].astype(object).where(made[c].notna(), None)
    else:
        computed: dict[str, Any] = {}
        for spec in features.columns:
            computed.update(TRANSFORMS[spec.transform].apply(df, spec))
        for c in numeric:
            out[c] = pd.Series(computed[c], index=df.index).astype("float64")
        for c in categorical:
            out[c] = computed[c]
    for c in keep:
        if c in df.columns and c not in out.columns:
            out[c] = df[c]
    return out


def feature_version(features: FeaturesConfig, search_dirs: Sequence[str | Path] = ()) -> str:
    """A short hash of the definition: the declared spec, the vocabulary's code and, for a module, its
    source. It changes whenever a feature definition changes (a lineage tag and a manifest field)."""
    h = hashlib.sha256(json.dumps(features.model_dump(mode="json"), sort_keys=True).encode())
    h.update(Path(__file__).read_bytes())
    if features.module:
        f = module_file(features.module, search_dirs)
        if f is not None and f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def label(df: pd.DataFrame, source_column: str, positive_above: float | None) -> pd.Series:
    """The target: ``source > positive_above`` (binary) or the source value (regression); NaN where the
    outcome is unknown."""
    import numpy as np
    import pandas as pd

    src = pd.to_numeric(df[source_column], errors="coerce").astype("float64")
    if positive_above is None:
        return src
    return pd.Series(np.where(src.isna(), np.nan, (src > positive_above).astype("float64")), index=df.index)
