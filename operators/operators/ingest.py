"""Operators for one batch of a model: ingest it, validate it (the gate), release it from quarantine.

Each is a thin adapter: it works out the partition of the run's data interval, calls the domain function
in ``airloop``, pushes small metadata to XCom, and emits the ``<model>.validated`` Asset event with URIs,
hashes and counts in its ``extra``. Data problems (an unreadable or invalid batch) fail the task without
retries; anything else (a file not landed yet, a storage hiccup) is retried with backoff.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from airloop_airflow.assets import model_asset
from airloop_airflow.base import ModelOperator, data_problems_fail_fast, event_extra, partition_of, report_link
from airloop_airflow.links.ui import REPORT_URL_KEY, ValidationReportLink

if TYPE_CHECKING:
    from airflow.sdk import Context


class BatchIngestOperator(ModelOperator):
    """Read the batch of the run's data interval (or ``source_uri``) into the raw zone, atomically.

    A run started by a webhook delivery carries what the sender announced (``rows``, ``sha256``) under
    ``webhook`` in its conf; it is recorded with the batch, and the gate compares it with what was read.

    :param model: the model name (templated)
    :param source_uri: read this URI instead of the interval's landing file, e.g. one handed in by a
        webhook through the run conf (templated)
    :param data_root: data root URI; defaults to ``AIRLOOP_DATA_ROOT``
    """

    template_fields: Sequence[str] = (*ModelOperator.template_fields, "source_uri")
    ui_color = "#e8f4fd"

    def __init__(self, *, source_uri: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source_uri = source_uri

    def execute(self, context: Context) -> dict[str, Any]:
        from airloop.gate import announcements_from_conf
        from airloop.ingest import Interval, ingest_batch

        cfg, root, partition = self.pipeline(), self.root(), partition_of(context)
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        interval = Interval(start.isoformat() if start else None, end.isoformat() if end else None)
        src = self.source_uri or None
        run = context.get("dag_run")
        self.log.info("Ingesting %s/%s from %s into %s", cfg.name, partition, src or "the landing area", root.uri)
        with data_problems_fail_fast():
            announced = announcements_from_conf((run.conf if run else None) or {})
            for a in announced:
                self.log.info("%s announced rows=%s sha256=%s: the gate checks them", a.by, a.rows, a.sha256)
            manifest = ingest_batch(
                cfg,
                root,
                partition=partition,
                interval=interval,
                run_id=context["run_id"],
                source_uri=src,
                announced=announced,
            )
        self.log.info(
            "Raw partition %s: %s rows, content %s", manifest["uri"], manifest["rows"], manifest["content_hash"]
        )
        return {k: manifest[k] for k in ("uri", "partition", "rows", "content_hash", "source_uri")}


class BatchValidationOperator(ModelOperator):
    """The gate: run the model's expectation suite on the run's raw partition.

    Pass: emits an event on ``<model>.validated`` whose ``extra`` holds the partition URI, content hash,
    row count and validation summary. Fail: the batch is moved to quarantine with ``validation.json`` and
    ``report.html``, the task fails (no retry) with every failed expectation in its message, and no event
    is emitted, so nothing downstream runs.
    """

    operator_extra_links = (ValidationReportLink(),)
    ui_color = "#fff4e5"

    def __init__(self, **kwargs: Any) -> None:
        model = kwargs["model"]
        kwargs.setdefault("outlets", [model_asset(model, "validated")])
        super().__init__(**kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        from airloop.errors import BatchValidationError
        from airloop.quarantine import validate_partition

        cfg, root, partition = self.pipeline(), self.root(), partition_of(context)
        with data_problems_fail_fast():
            try:
                result = validate_partition(cfg, root, partition)
            except BatchValidationError:
                context["ti"].xcom_push(
                    key=REPORT_URL_KEY, value=report_link(root, root.quarantine_report(cfg.name, partition))
                )
                raise
        context["ti"].xcom_push(key=REPORT_URL_KEY, value=report_link(root, result["report_uri"]))
        extra = event_extra(result)
        context["outlet_events"][model_asset(cfg.name, "validated")].extra = extra
        self.log.info(
            "Batch %s/%s passed %s expectations; published %s",
            cfg.name,
            partition,
            result["validation"]["evaluated"],
            cfg.asset_name("validated"),
        )
        return extra


class QuarantineReleaseOperator(ModelOperator):
    """Re-validate a quarantined batch with the current suite and, if it passes, publish it.

    :param partition: the quarantined partition, e.g. ``ds=2013-01-08`` (templated; usually from conf)
    """

    template_fields: Sequence[str] = (*ModelOperator.template_fields, "partition")
    operator_extra_links = (ValidationReportLink(),)

    def __init__(self, *, partition: str, **kwargs: Any) -> None:
        model = kwargs["model"]
        kwargs.setdefault("outlets", [model_asset(model, "validated")])
        super().__init__(**kwargs)
        self.partition = partition

    def execute(self, context: Context) -> dict[str, Any]:
        from airloop.errors import BatchValidationError, QuarantineError
        from airloop.quarantine import release

        cfg, root = self.pipeline(), self.root()
        partition = self.partition if "=" in self.partition else f"ds={self.partition}"
        by = f"{context['dag'].dag_id}/{context['run_id']}"
        try:
            result = release(cfg, root, partition, by=by)
        except BatchValidationError as e:
            context["ti"].xcom_push(
                key=REPORT_URL_KEY, value=report_link(root, root.quarantine_report(cfg.name, partition))
            )
            raise AirflowFailException(f"Not released, still failing:\n{e}") from e
        except QuarantineError as e:
            raise AirflowFailException(str(e)) from e
        context["ti"].xcom_push(key=REPORT_URL_KEY, value=report_link(root, result["report_uri"]))
        extra = {**event_extra(result), "released_by": by}
        context["outlet_events"][model_asset(cfg.name, "validated")].extra = extra
        self.log.info("Released %s/%s from quarantine and published it", cfg.name, partition)
        return extra
