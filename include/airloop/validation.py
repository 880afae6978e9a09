"""The validation gate: a model's Great Expectations 1.x suite run on one batch.

The suite a batch faces has two parts:

* **schema checks** generated from the pipeline config (every declared column exists, has its declared
  type, and the batch has at least ``validation.min_rows`` rows), so a model's schema is written once;
* **data checks** from the model's suite file in ``include/airloop/expectations/`` (GX 1.x JSON:
  ``{"name": ..., "expectations": [{"type": ..., "kwargs": {...}, "meta": {...}}]}``);
* **the gate's own checks** of the batch as a delivery (:mod:`airloop.gate`: row key, undeclared columns,
  event time against the data interval, announced rows and SHA-256, row count against recent batches),
  listed and counted beside the suite's expectations.

GX is called directly (an ephemeral context, a pandas dataframe asset): the Airflow GX provider cannot be
installed beside Airflow 3.3. The outcome is a plain JSON document plus a self-contained HTML report.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airloop.config import PipelineConfig
from airloop.storage import QUARANTINE_REPORT, VALIDATION_RESULT

if TYPE_CHECKING:
    import pandas as pd

    from airloop.gate import BatchContext

log = logging.getLogger(__name__)

#: pandas dtypes (and GX's observed element types) accepted for each declared column type.
TYPE_LISTS: dict[str, list[str]] = {
    "int": ["int64", "int32", "Int64", "Int32"],
    "float": ["float64", "float32", "Float64", "int64", "Int64"],
    "string": ["object", "str", "string", "StringDtype"],
    # batches store timestamps as naive UTC (see airloop.ingest.read_batch)
    "timestamp": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]"],
    "bool": ["bool", "boolean"],
}

# How many unexpected values a report shows per expectation.
_SAMPLE = 10


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's verdict, flattened for people and alerts."""

    expectation: str
    column: str | None
    kwargs: dict[str, Any]
    success: bool
    observed: Any = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    sample: list[Any] = field(default_factory=list)
    note: str = ""

    def describe(self) -> str:
        """One line: which check, on which column, what was observed."""
        what = self.expectation.removeprefix("expect_")
        col = f" on '{self.column}'" if self.column else ""
        args = {
            k: (f"[{len(v)} values]" if isinstance(v, list) and len(v) > 8 else v)
            for k, v in self.kwargs.items()
            if k not in ("column", "batch_id")
        }
        parts = [f"{what}{col}" + (f" {json.dumps(args, default=str)}" if args else "")]
        if self.unexpected_count is not None:
            pct = f" ({self.unexpected_percent:.2f}%)" if self.unexpected_percent is not None else ""
            parts.append(f"{self.unexpected_count} unexpected value(s){pct}, e.g. {self.sample[:5]}")
        elif self.observed is not None:
            parts.append(f"observed {json.dumps(self.observed, default=str)}")
        if self.note:
            parts.append(self.note)
        if len(parts) == 1 and not self.success:
            parts.append("no result (is the column missing?)")
        return ": ".join(parts)


@dataclass(frozen=True)
class ValidationOutcome:
    """The verdict on one batch."""

    success: bool
    suite: str
    rows: int
    expectations: list[ExpectationOutcome]
    statistics: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [e for e in self.expectations if not e.success]

    def summary(self) -> dict[str, Any]:
        """Small and JSON-safe: for XCom, Asset event extras and alerts."""
        return {
            "success": self.success,
            "suite": self.suite,
            "rows": self.rows,
            "evaluated": self.statistics.get("evaluated_expectations"),
            "failed": len(self.failures),
            "failures": [f.describe() for f in self.failures],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "suite": self.suite,
            "rows": self.rows,
            "statistics": self.statistics,
            "expectations": [e.__dict__ for e in self.expectations],
            "great_expectations_result": self.raw,
        }


def failure_outcome(suite: str, check: str, message: str, **observed: Any) -> ValidationOutcome:
    """An outcome for a batch that could not even be read (so GX never ran)."""
    exp = ExpectationOutcome(
        expectation=check, column=None, kwargs={}, success=False, observed=observed or None, note=message
    )
    stats = {"evaluated_expectations": 1, "successful_expectations": 0, "unsuccessful_expectations": 1}
    return ValidationOutcome(success=False, suite=suite, rows=0, expectations=[exp], statistics=stats)


def load_suite_dict(cfg: PipelineConfig) -> dict[str, Any]:
    data = json.loads(cfg.suite_path.read_text())
    if not isinstance(data, dict) or "expectations" not in data:
        raise ValueError(f"{cfg.suite_path}: an expectation suite needs an 'expectations' list")
    return data


def schema_expectations(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Expectations derived from ``schema`` in the pipeline config."""
    cols = cfg.data_schema.columns
    exps: list[dict[str, Any]] = [
        {
            "type": "expect_table_columns_to_match_set",
            "kwargs": {"column_set": list(cols), "exact_match": False},
            "meta": {"origin": "schema", "why": "every declared column must be present"},
        },
        {
            "type": "expect_table_row_count_to_be_between",
            "kwargs": {"min_value": cfg.validation.min_rows, "max_value": None},
            "meta": {"origin": "schema", "why": "validation.min_rows"},
        },
    ]
    for name, typ in cols.items():
        exps.append(
            {
                "type": "expect_column_values_to_be_in_type_list",
                "kwargs": {"column": name, "type_list": TYPE_LISTS[typ]},
                "meta": {"origin": "schema", "declared_type": typ},
            }
        )
    return exps


def _quiet_gx() -> None:
    # GX logs ~150 info lines at import when Airflow has configured structlog, and shows progress bars.
    for name in ("great_expectations", "great_expectations._docs_decorators"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _flatten(result: dict[str, Any]) -> ExpectationOutcome:
    conf = result.get("expectation_config", {})
    kwargs = {k: v for k, v in conf.get("kwargs", {}).items() if k != "batch_id"}
    res = result.get("result") or {}
    exc = result.get("exception_info") or {}
    note = ""
    if exc.get("raised_exception"):
        msg = (exc.get("exception_message") or "").strip().splitlines()
        note = "could not be evaluated: " + (msg[0] if msg else "error")
    observed = res.get("observed_value")
    details = res.get("details") or {}
    if "mismatched" in details:
        observed = {"columns": observed, "mismatched": details["mismatched"]}
    sample = res.get("partial_unexpected_list") or []
    return ExpectationOutcome(
        expectation=conf.get("type", "?"),
        column=kwargs.get("column"),
        kwargs=kwargs,
        success=bool(result.get("success")),
        observed=observed,
        unexpected_count=res.get("unexpected_count"),
        unexpected_percent=res.get("unexpected_percent"),
        sample=list(sample[:_SAMPLE]),
        note=note,
    )


def validate_frame(cfg: PipelineConfig, df: pd.DataFrame, context: BatchContext | None = None) -> ValidationOutcome:
    """Run the whole gate on one batch: its own checks (:mod:`airloop.gate`) and the model's suite (schema
    checks + suite file).

    :param cfg: the model's pipeline config
    :param df: the batch
    :param context: what is known of the batch besides its rows (data interval, announcements, recent row
        counts); without it only the checks that need nothing else run (a sample in ``airloop model check``)
    """
    from airloop.gate import BatchContext, check_batch

    gate_checks = check_batch(cfg, df, context or BatchContext())
    gx_outcome = _run_suite(cfg, df)
    return _with_checks(gx_outcome, gate_checks)


def _with_checks(outcome: ValidationOutcome, checks: list[ExpectationOutcome]) -> ValidationOutcome:
    """The suite's outcome with the gate's checks first, counted in its statistics."""
    stats = dict(outcome.statistics)
    passed = sum(c.success for c in checks)
    evaluated = int(stats.get("evaluated_expectations") or 0) + len(checks)
    successful = int(stats.get("successful_expectations") or 0) + passed
    stats.update(
        evaluated_expectations=evaluated,
        successful_expectations=successful,
        unsuccessful_expectations=evaluated - successful,
        success_percent=100.0 * successful / evaluated if evaluated else 100.0,
    )
    return ValidationOutcome(
        success=outcome.success and passed == len(checks),
        suite=outcome.suite,
        rows=outcome.rows,
        expectations=[*checks, *outcome.expectations],
        statistics=stats,
        raw=outcome.raw,
    )


def _run_suite(cfg: PipelineConfig, df: pd.DataFrame) -> ValidationOutcome:
    """The model's Great Expectations suite (schema checks + suite file) on one batch."""
    import os

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    _quiet_gx()
    import great_expectations as gx

    _quiet_gx()
    suite_dict = load_suite_dict(cfg)
    suite_name = suite_dict.get("name", cfg.name)
    expectations = schema_expectations(cfg) + list(suite_dict["expectations"])

    ctx = gx.get_context(mode="ephemeral")
    # keep task logs readable; GX reads this setting as a mapping (its validator), though typed as a class
    ctx.variables.progress_bars = {"globally": False, "metric_calculations": False}  # type: ignore[assignment]
    asset = ctx.data_sources.add_pandas("airloop").add_dataframe_asset(cfg.name)
    batch_def = asset.add_batch_definition_whole_dataframe("batch")
    suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name, expectations=expectations))
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{cfg.name}_gate", data=batch_def, suite=suite))
    result = vd.run(
        batch_parameters={"dataframe": df},
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": _SAMPLE},
    )
    raw: dict[str, Any] = result.to_json_dict()  # type: ignore[no-untyped-call]
    outcomes = [_flatten(r) for r in raw.get("results", [])]
    return ValidationOutcome(
        success=bool(raw.get("success")),
        suite=suite_name,
        rows=len(df),
        expectations=outcomes,
        statistics=raw.get("statistics", {}),
        raw=json.loads(json.dumps(raw, default=str)),
    )


def failure_message(
    cfg: PipelineConfig, partition: str, outcome: ValidationOutcome, quarantine_uri: str, received: str | None = None
) -> str:
    """The task's error message: every failed expectation with what was observed, and what to do.

    :param received: the name of the file of bytes as received in the quarantine folder, if kept
    """
    lines = [
        f"Batch {cfg.name}/{partition} failed validation: {len(outcome.failures)} of "
        f"{outcome.statistics.get('evaluated_expectations', len(outcome.expectations))} expectations "
        f"failed on {outcome.rows} rows (suite {outcome.suite}).",
    ]
    lines += [f"  FAILED {f.describe()}" for f in outcome.failures]
    lines += [
        f"The batch is in quarantine: {quarantine_uri} ({QUARANTINE_REPORT}, {VALIDATION_RESULT}"
        + (f", the file as received: {received}" if received else "")
        + ").",
        f"Next: fix the source and re-run the interval, or `airloop quarantine release {cfg.name} {partition}` "
        f"after fixing the suite, or `airloop quarantine reject {cfg.name} {partition} --reason ...`.",
    ]
    return "\n".join(lines)


def render_html_report(cfg: PipelineConfig, partition: str, outcome: ValidationOutcome, context: dict[str, Any]) -> str:
    """A self-contained HTML page a person can open from the Airflow UI or the quarantine folder."""
    e = html.escape
    verdict = "PASSED" if outcome.success else "FAILED"
    colour = "#1a7f37" if outcome.success else "#cf222e"
    rows = []
    for x in sorted(outcome.expectations, key=lambda x: x.success):
        status = "pass" if x.success else "FAIL"
        args = {k: v for k, v in x.kwargs.items() if k != "column"}
        detail = ""
        if x.unexpected_count is not None:
            pct = f" ({x.unexpected_percent:.2f}%)" if x.unexpected_percent is not None else ""
            detail = f"{x.unexpected_count} unexpected{pct}; sample: {x.sample}"
        elif x.observed is not None:
            detail = f"observed: {json.dumps(x.observed, default=str)}"
        if x.note:
            detail = f"{detail} {x.note}".strip()
        rows.append(
            f"<tr class='{status.lower()}'><td>{status}</td><td>{e(x.expectation)}</td><td>{e(x.column or '')}</td>"
            f"<td><code>{e(json.dumps(args, default=str))}</code></td><td>{e(detail)}</td></tr>"
        )
    ctx_rows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in context.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(cfg.name)} {e(partition)}: validation {verdict}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#1f2328}} h1{{font-size:1.4rem}}
.verdict{{color:#fff;background:{colour};padding:.2rem .6rem;border-radius:4px}}
table{{border-collapse:collapse;margin:1rem 0;width:100%}} \
td,th{{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}}
tr.fail td:first-child{{color:#cf222e;font-weight:bold}} tr.pass td:first-child{{color:#1a7f37}} code{{font-size:.8rem}}
</style></head><body>
<h1>Validation of <code>{e(cfg.name)}</code> batch <code>{e(partition)}</code> \
<span class="verdict">{verdict}</span></h1>
<p>{len(outcome.failures)} of {len(outcome.expectations)} expectations failed on {outcome.rows} rows \
(suite <code>{e(outcome.suite)}</code>).</p>
<table>{ctx_rows}</table>
<h2>Expectations</h2>
<table><tr><th>status</th><th>expectation</th><th>column</th><th>arguments</th><th>observed</th></tr>
{"".join(rows)}
</table>
<h2>What to do</h2>
<ul>
<li>Fix the data upstream and re-run the interval (clear the run's tasks in the Airflow UI, or trigger \
<code>{e(cfg.dag_id("ingest"))}</code> with <code>source_uri</code>).</li>
<li>If the suite is wrong, fix it, then <code>airloop quarantine release {e(cfg.name)} {e(partition)}</code> \
(re-validates, then publishes).</li>
<li>If the batch is unusable: <code>airloop quarantine reject {e(cfg.name)} {e(partition)} --reason "..."</code> \
(kept, never trained on).</li>
</ul>
</body></html>
"""
