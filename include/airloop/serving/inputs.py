"""The model server's check of a request's values: the one place that decides what may be scored and logged.

Built once per server from the model's config (:meth:`InputSchema.from_config`):

* every column the model's schema declares is checked wherever a request carries it: its declared type
  (int, float, string, timestamp, bool), numbers finite and within ``deployment.max_abs_input``;
* with ``deployment.check_inputs: suite`` (the default), also the rules of the model's expectation suite
  that a single request can be held to: ranges (``expect_column_values_to_be_between``), value sets
  (``expect_column_values_to_be_in_set``) and not-null (``expect_column_values_to_not_be_null``), each
  without ``mostly`` (a rule with ``mostly`` tolerates some rows by design, and a row condition cannot be
  judged out of its batch). The suite is parsed here, once;
* columns the schema does not declare are dropped: never scored, never logged.

Every refusal is a :class:`RequestError` (400) whose message names the column, the rule and a value. The
checks are vectorised per column (numpy, and pandas' type inference written in C), and the numeric
columns are checked together as one array, so their cost barely grows with the rows of a request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airloop.serving.protocol import RequestError, Table

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from airloop.config import PipelineConfig

NUMERIC = frozenset({"int", "float"})
#: what pandas' type inference may report for a column of numbers that is not already numeric
#: (nulls among numbers, integers beyond int64)
_NUMBERS = frozenset({"integer", "floating", "mixed-integer-float", "empty", "decimal"})
_TEXT = frozenset({"string", "empty"})
_BOOLS = frozenset({"boolean", "empty"})


@dataclass(frozen=True)
class ColumnRule:
    """What the suite asks of one column's values (nulls are judged by ``not_null`` alone)."""

    low: float = -math.inf
    high: float = math.inf
    low_strict: bool = False
    high_strict: bool = False
    values: frozenset[Any] | None = None
    not_null: bool = False

    def range_text(self) -> str:
        """``between 1 and 12``, ``at least 0``, ``above 0 and below 1``."""
        has_low, has_high = self.low > -math.inf, self.high < math.inf
        if has_low and has_high and not (self.low_strict or self.high_strict):
            return f"between {_num(self.low)} and {_num(self.high)}"
        parts = [f"{'above' if self.low_strict else 'at least'} {_num(self.low)}"] if has_low else []
        parts += [f"{'below' if self.high_strict else 'at most'} {_num(self.high)}"] if has_high else []
        return " and ".join(parts)


@dataclass(frozen=True)
class Checked:
    """A request that passed: the frame the model scores and the values the prediction log keeps.

    :param frame: the request's table, with numeric columns that arrived as mixed objects made numeric
    :param logged: the declared columns the request carries, each as an array (nulls as None)
    """

    frame: pd.DataFrame
    logged: dict[str, np.ndarray[Any, Any]]

    def log_rows(self) -> list[dict[str, Any]]:
        """The logged values, one dict per row (JSON-ready: nulls are None)."""
        names = list(self.logged)
        return [
            dict(zip(names, values, strict=True))
            for values in zip(*(self.logged[n].tolist() for n in names), strict=True)
        ]


@dataclass(frozen=True)
class InputSchema:
    """What a request must carry and what each value may be.

    :param required: the columns the model reads (``cfg.request_columns``)
    :param logged: the columns the prediction log keeps: the required ones, then those outcomes are joined on
    :param types: the declared type of every column the schema knows; a required column without one is only
        checked for finite numbers
    :param rules: the suite's rules per column (empty with ``check_inputs: schema``)
    :param max_abs: numbers of larger magnitude are refused
    """

    required: tuple[str, ...]
    logged: tuple[str, ...] = ()
    types: Mapping[str, str] = field(default_factory=dict)
    rules: Mapping[str, ColumnRule] = field(default_factory=dict)
    max_abs: float = float(2**53)

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> InputSchema:
        """The model's schema, and its suite's rules when ``cfg.deployment.check_inputs`` is ``suite``."""
        dep = cfg.deployment
        rules: dict[str, ColumnRule] = {}
        if dep.check_inputs == "suite":
            from airloop.validation import load_suite_dict

            rules = suite_rules(load_suite_dict(cfg).get("expectations", []), cfg.data_schema.columns)
        required = tuple(cfg.request_columns)
        return cls(
            required=required,
            logged=tuple(dict.fromkeys([*required, *dep.outcome_key])),
            types=dict(cfg.data_schema.columns),
            rules=rules,
            max_abs=dep.max_abs_input,
        )

    @property
    def text_columns(self) -> list[str]:
        """Columns a CSV body is read as text for."""
        return [c for c, t in self.types.items() if t == "string"]

    def check(self, table: Table | pd.DataFrame) -> Checked:
        """The request's values, checked; raises :class:`RequestError` (400) naming the first bad column."""
        if not isinstance(table, Table):
            table = Table.from_frame(table)
        cols = table.columns
        missing = [c for c in self.required if c not in cols]
        if missing:
            raise RequestError(400, f"missing input columns {missing}; the model needs {list(self.required)}")
        numbers: dict[str, np.ndarray[Any, Any]] = {}
        others: dict[str, np.ndarray[Any, Any]] = {}
        for c, values in cols.items():
            kind = self.types.get(c)
            if kind is None and c not in self.required:
                continue  # not declared: neither scored nor logged
            if kind in NUMERIC or (kind is None and _numeric(values)):
                numbers[c] = _numbers(c, kind or "float", values)
            else:
                others[c] = _other(c, kind, values)
        self._check_numbers(numbers)
        for c, values in others.items():
            self._check_rule(c, values)
        return self._checked(numbers, others)

    def _check_numbers(self, numbers: dict[str, np.ndarray[Any, Any]]) -> None:
        """Finite, within ``max_abs``, whole where declared int, and within the suite's ranges and sets: the
        numeric columns as one (rows x columns) array, a few numpy passes in all."""
        import numpy as np

        if not numbers:
            return
        names = list(numbers)
        block = np.column_stack([numbers[c].astype(np.float64, copy=False) for c in names])
        with np.errstate(invalid="ignore"):
            self._refuse_where(
                names,
                block,
                np.isinf(block),
                "is not a finite number (NaN, Infinity or beyond the float range); send null for a missing value",
            )
            self._refuse_where(
                names,
                block,
                np.abs(block) > self.max_abs,
                f"is beyond ±{self.max_abs:.6g}, the largest magnitude this server accepts (deployment.max_abs_input)",
            )
            whole = [i for i, c in enumerate(names) if self.types.get(c) == "int" and numbers[c].dtype.kind == "f"]
            if whole:
                part = block[:, whole]
                self._refuse_where(
                    [names[i] for i in whole],
                    part,
                    np.isfinite(part) & (part != np.floor(part)),
                    "is not a whole number; the column is declared int",
                )
            ruled = [i for i, c in enumerate(names) if c in self.rules]
            if ruled:
                self._check_ranges([names[i] for i in ruled], block[:, ruled])
        for c in names:
            self._check_rule(c, numbers[c])

    def _check_ranges(self, names: list[str], block: np.ndarray[Any, Any]) -> None:
        import numpy as np

        rules = [self.rules[c] for c in names]
        low, high = np.array([r.low for r in rules]), np.array([r.high for r in rules])
        low_strict, high_strict = np.array([r.low_strict for r in rules]), np.array([r.high_strict for r in rules])
        below = np.where(low_strict, block <= low, block < low)
        above = np.where(high_strict, block >= high, block > high)
        bad = below | above
        if bad.any():
            row, col = np.argwhere(bad)[0]
            c = names[col]
            raise RequestError(
                400,
                f"column {c!r}: {_num(block[row, col])} (row {row}) is out of range; the model's suite "
                f"allows values {self.rules[c].range_text()}",
            )

    def _check_rule(self, c: str, values: np.ndarray[Any, Any]) -> None:
        """The not-null and value-set rules of one column (numbers are range-checked as a block)."""
        import numpy as np

        rule = self.rules.get(c)
        if rule is None or (rule.values is None and not rule.not_null):
            return
        if values.dtype.kind in "iub":
            nulls = np.zeros(len(values), dtype=bool)
        else:
            nulls = np.isnan(values) if values.dtype.kind == "f" else _nulls(values)
        if rule.not_null and nulls.any():
            raise RequestError(
                400, f"column {c!r} is null in row {int(nulls.argmax())}; the model's suite requires a value"
            )
        if rule.values is not None:
            unknown = set(values[~nulls].tolist()) - rule.values
            if unknown:
                shown = sorted(map(_short, unknown))[:3]
                allowed = sorted(map(_short, rule.values))
                more = f" (and {len(allowed) - 20} more)" if len(allowed) > 20 else ""
                raise RequestError(
                    400,
                    f"column {c!r}: {', '.join(shown)} is not among the values the model's suite allows: "
                    f"{', '.join(allowed[:20])}{more}",
                )

    @staticmethod
    def _refuse_where(names: list[str], block: np.ndarray[Any, Any], bad: np.ndarray[Any, Any], why: str) -> None:
        import numpy as np

        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise RequestError(400, f"column {names[col]!r}: {_num(block[row, col])} (row {row}) {why}")

    def _checked(self, numbers: dict[str, np.ndarray[Any, Any]], others: dict[str, np.ndarray[Any, Any]]) -> Checked:
        """The model's frame (its columns only, numbers as numeric arrays) and the logged values."""
        import numpy as np
        import pandas as pd

        model: dict[str, np.ndarray[Any, Any]] = {}
        for c in self.required:
            values = numbers[c] if c in numbers else others[c]
            if self.types.get(c) == "int" and values.dtype.kind == "f" and not np.isnan(values).any():
                values = values.astype(np.int64)  # whole floats (1.0, a CSV's 1.0): ints, as the signature expects
            model[c] = values
        frame = pd.DataFrame(model, copy=False)
        logged: dict[str, np.ndarray[Any, Any]] = {}
        for c in self.logged:
            found = numbers.get(c, others.get(c))
            if found is None:
                continue
            values = found
            if values.dtype.kind in "iub":
                logged[c] = values
                continue
            nulls = np.isnan(values) if values.dtype.kind == "f" else _nulls(values)
            if nulls.any():
                values = values.astype(object)
                values[nulls] = None
            logged[c] = values
        return Checked(frame, logged)


def suite_rules(expectations: Iterable[Mapping[str, Any]], columns: Mapping[str, str]) -> dict[str, ColumnRule]:
    """The per-row rules of a GX suite's expectations on declared columns: ranges on numeric columns, value
    sets, not-null. Expectations with ``mostly`` below 1 or a ``row_condition`` are left to the gate."""
    found: dict[str, dict[str, Any]] = {}
    for e in expectations:
        kw = e.get("kwargs") or {}
        col = kw.get("column")
        mostly = kw.get("mostly")
        if not isinstance(col, str) or col not in columns or kw.get("row_condition"):
            continue
        if mostly is not None and not (_is_number(mostly) and mostly >= 1):
            continue
        rule = found.setdefault(col, {})
        kind = e.get("type") or e.get("expectation_type")
        if kind == "expect_column_values_to_be_between" and columns[col] in NUMERIC:
            if _is_number(kw.get("min_value")):
                rule["low"], rule["low_strict"] = float(kw["min_value"]), bool(kw.get("strict_min"))
            if _is_number(kw.get("max_value")):
                rule["high"], rule["high_strict"] = float(kw["max_value"]), bool(kw.get("strict_max"))
        elif kind == "expect_column_values_to_be_in_set" and isinstance(kw.get("value_set"), list):
            rule["values"] = frozenset(v for v in kw["value_set"] if v is not None)
        elif kind == "expect_column_values_to_not_be_null":
            rule["not_null"] = True
    return {c: ColumnRule(**r) for c, r in found.items() if r}


def _numeric(values: np.ndarray[Any, Any]) -> bool:
    """Whether an undeclared column holds numbers (and nulls) only."""
    import pandas as pd

    if values.dtype.kind in "iuf":
        return True
    return values.dtype.kind == "O" and pd.api.types.infer_dtype(values, skipna=True) in _NUMBERS - {"empty"}


def _numbers(column: str, kind: str, values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The column as an int64 (whole numbers, no null) or float64 array (nulls as NaN), or a 400 if it holds
    anything but numbers and nulls."""
    import numpy as np
    import pandas as pd

    if values.dtype.kind in "iuf":
        return values
    inferred = pd.api.types.infer_dtype(values, skipna=True) if values.dtype.kind == "O" else ""
    if inferred not in _NUMBERS:
        raise RequestError(400, f"column {column!r} is declared {kind}: {_example(values, 'a number')}")
    nulls = np.equal(values, _none())
    if inferred == "integer" and not nulls.any():
        try:
            ints: np.ndarray[Any, Any] = values.astype(np.int64)
            return ints
        except OverflowError:  # beyond int64: as floats, refused by magnitude
            pass
    if nulls.any():
        values = values.copy()
        values[nulls] = np.nan
    try:
        floats: np.ndarray[Any, Any] = values.astype(np.float64)
    except OverflowError:
        raise RequestError(400, f"column {column!r}: a number is beyond the float range (about ±1.8e308)") from None
    return floats


def _other(column: str, kind: str | None, values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A text, timestamp or bool column, checked for its declared type (an untyped column passes as is)."""
    import pandas as pd

    if kind is None:
        return values
    if kind == "bool":
        if values.dtype.kind == "b":
            return values
        if pd.api.types.infer_dtype(values, skipna=True) in _BOOLS:
            return values if pd.isna(values).any() else values.astype(bool)
        raise RequestError(400, f"column {column!r} is declared bool: {_example(values, 'true or false')}")
    if kind == "timestamp" and values.dtype.kind in "iuM":  # epoch numbers (pandas' to_json default)
        return values
    inferred = pd.api.types.infer_dtype(values, skipna=True)
    if kind == "timestamp" and inferred == "integer":
        return values
    if inferred not in _TEXT:
        what = "ISO 8601 text" if kind == "timestamp" else "text"  # or, for a timestamp, whole epoch numbers
        raise RequestError(400, f"column {column!r} is declared {kind}: {_example(values, what)}")
    if kind == "timestamp" and inferred == "string":
        parsed = pd.to_datetime(pd.Series(values), errors="coerce", utc=True, format="ISO8601")
        bad = (parsed.isna() & pd.notna(values)).to_numpy()
        if bad.any():
            raise RequestError(
                400,
                f"column {column!r} is declared timestamp: {str(values[bad.argmax()])[:40]!r} is not an ISO 8601 "
                "timestamp",
            )
    return values


def _nulls(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Where an object array holds None or NaN (a CSV's empty text cell): two vectorised comparisons."""
    import numpy as np

    nulls: np.ndarray[Any, Any] = np.equal(values, _none()) | (values != values)
    return nulls


def _none() -> np.ndarray[Any, Any]:
    """``None`` as a one-cell object array, to compare object arrays with elementwise."""
    import numpy as np

    return np.array([None], dtype=object)


def _example(values: np.ndarray[Any, Any], wanted: str) -> str:
    """``got <value> in row <i>; send <wanted>`` for the first value that is not what the column needs (called
    only once a column is refused, so the loop runs on the error path alone)."""
    expect = {"a number": (int, float), "true or false": (bool,), "text": (str,), "ISO 8601 text": (str,)}[wanted]
    for i, v in enumerate(values.tolist()):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        bad_bool = isinstance(v, bool) and bool not in expect
        if bad_bool or not isinstance(v, expect):
            return f"got {_short(v)} ({type(v).__name__}) in row {i}; send {wanted}"
    return f"send {wanted}"


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _num(x: float) -> str:
    return f"{x:.10g}"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
