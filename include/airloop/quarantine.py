"""The quarantine zone: batches that failed the gate, kept whole with their validation result and report.

``quarantine/<model>/<partition>/`` holds the bytes as received (``received.<format>``, their SHA-256 is
``source_sha256`` in the manifest) whatever stage refused the batch, the parsed batch (``data.parquet``) when
it could be read, ``_manifest.json`` (the ingest manifest plus why it was quarantined), ``validation.json``
and ``report.html``. A decision by on-call (``released``, ``rejected``) or a later
good run of the same interval (``superseded``) is written as ``_decision.json`` beside them: nothing in
quarantine is ever deleted by the pipeline.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
from dataclasses import dataclass
from typing import Any

from airloop.config import PipelineConfig
from airloop.errors import BatchValidationError, QuarantineError
from airloop.gate import BatchContext, recent_row_counts
from airloop.storage import (
    DATA_FILE,
    QUARANTINE_DECISION,
    QUARANTINE_REPORT,
    RECEIVED_FILE,
    VALIDATION_RESULT,
    DataRoot,
    read_parquet_bytes,
)
from airloop.validation import (
    ValidationOutcome,
    failure_message,
    failure_outcome,
    render_html_report,
    validate_frame,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuarantinedBatch:
    model: str
    partition: str
    uri: str
    status: str  # quarantined | released | rejected | superseded
    stage: str  # ingest (unreadable) | validation
    reason: str
    failures: list[str]
    rows: int | None
    run_id: str | None
    decision: dict[str, Any] | None

    @property
    def report_uri(self) -> str:
        return f"{self.uri}/{QUARANTINE_REPORT}"


def _report_context(manifest: dict[str, Any], **extra: Any) -> dict[str, Any]:
    keys = ("model", "partition", "source_uri", "source_sha256", "received_file", "rows", "content_hash", "run_id")
    ctx = {k: manifest[k] for k in keys if manifest.get(k) is not None}
    di = manifest.get("data_interval") or {}
    if di.get("start"):
        ctx["data_interval"] = f"{di.get('start')} .. {di.get('end')}"
    ctx.update(extra)
    return ctx


def _write_quarantine(
    cfg: PipelineConfig,
    root: DataRoot,
    partition: str,
    files: dict[str, bytes],
    manifest: dict[str, Any],
    outcome: ValidationOutcome,
    stage: str,
) -> str:
    q_uri = root.quarantine(cfg.name, partition)
    q_manifest = {
        **manifest,
        "quarantine": {
            "stage": stage,
            "reason": "unreadable batch" if stage == "ingest" else "failed validation",
            "failures": outcome.summary()["failures"],
            "run_id": manifest.get("run_id"),
        },
    }
    report = render_html_report(cfg, partition, outcome, _report_context(manifest, quarantine=q_uri))
    root.write_partition(
        q_uri,
        {
            **files,
            VALIDATION_RESULT: json.dumps(outcome.to_json(), indent=2, default=str).encode(),
            QUARANTINE_REPORT: report.encode(),
        },
        q_manifest,
    )
    log.warning("quarantined %s/%s at %s: %s", cfg.name, partition, q_uri, "; ".join(outcome.summary()["failures"]))
    return q_uri


def quarantine_unreadable(
    cfg: PipelineConfig, root: DataRoot, partition: str, data: bytes, manifest: dict[str, Any], error: str
) -> str:
    """Keep a batch that could not be parsed (its bytes as received) with a report; return its URI."""
    outcome = failure_outcome(cfg.validation.suite, f"readable_as_{cfg.source.format}", error, bytes=len(data))
    received = manifest.get("received_file") or RECEIVED_FILE.format(format=cfg.source.format)
    manifest = {**manifest, "received_file": received}
    return _write_quarantine(cfg, root, partition, {received: data}, manifest, outcome, stage="ingest")


def write_validation_report(
    cfg: PipelineConfig, root: DataRoot, partition: str, outcome: ValidationOutcome, manifest: dict[str, Any]
) -> str:
    """Store the validation result and report of a batch under ``reports/``; return the report URI."""
    result = {**outcome.to_json(), "content_hash": manifest.get("content_hash")}
    # the content hash ties the verdict to the exact data it was given (see airloop.catalog)
    root.write_json_atomic(root.validation_result(cfg.name, partition), result)
    report_uri = root.validation_report(cfg.name, partition)
    root.write_bytes_atomic(report_uri, render_html_report(cfg, partition, outcome, _report_context(manifest)).encode())
    return report_uri


def _context(cfg: PipelineConfig, root: DataRoot, partition: str, manifest: dict[str, Any]) -> BatchContext:
    """What the gate checks besides the rows: the manifest's interval and announcements, recent row counts."""
    recent = recent_row_counts(cfg, root, partition) if cfg.validation.min_rows_relative is not None else None
    return BatchContext.from_manifest(manifest, recent)


def _batch_files(root: DataRoot, uri: str, manifest: dict[str, Any], data_file: str, data: bytes) -> dict[str, bytes]:
    """The files of a batch to move between zones: its frame, and the bytes as received when they were kept
    (partitions ingested before they were, have none)."""
    files = {data_file: data}
    received = manifest.get("received_file")
    if received and root.exists(f"{uri}/{received}"):
        files[received] = root.read_bytes(f"{uri}/{received}")
    return files


def validate_partition(cfg: PipelineConfig, root: DataRoot, partition: str) -> dict[str, Any]:
    """The gate: validate the raw partition; publish it, or move it to quarantine and raise.

    :returns: the manifest plus ``validation`` (summary) and ``report_uri`` when the batch passes
    :raises BatchValidationError: when it fails; the batch is then in quarantine with its report and the
        bytes as received
    """
    raw_uri = root.raw(cfg.name, partition)
    manifest = root.read_json(root.manifest(raw_uri))
    data_file = manifest.get("data_file", DATA_FILE)
    data = root.read_bytes(f"{raw_uri}/{data_file}")  # read once: validated, and kept whole if quarantined
    outcome = validate_frame(cfg, read_parquet_bytes(data), _context(cfg, root, partition, manifest))
    report_uri = write_validation_report(cfg, root, partition, outcome, manifest)
    if not outcome.success:
        files = _batch_files(root, raw_uri, manifest, data_file, data)
        q_uri = _write_quarantine(cfg, root, partition, files, manifest, outcome, stage="validation")
        root.remove(raw_uri)  # the batch now lives in quarantine only: never trained on
        received = manifest.get("received_file") if manifest.get("received_file") in files else None
        raise BatchValidationError(
            failure_message(cfg, partition, outcome, q_uri, received), summary=outcome.summary(), quarantine_uri=q_uri
        )
    _supersede(cfg, root, partition, manifest.get("run_id"))
    return {**manifest, "uri": raw_uri, "validation": outcome.summary(), "report_uri": report_uri}


def _decision_uri(q_uri: str) -> str:
    return f"{q_uri}/{QUARANTINE_DECISION}"


def _decide(root: DataRoot, q_uri: str, decision: str, by: str, **extra: Any) -> dict[str, Any]:
    record = {
        "decision": decision,
        "by": by,
        # An audit timestamp of a person's action, not pipeline logic.
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }
    root.write_json_atomic(_decision_uri(q_uri), record)
    return record


def _supersede(cfg: PipelineConfig, root: DataRoot, partition: str, run_id: str | None) -> None:
    q_uri = root.quarantine(cfg.name, partition)
    if root.exists(root.manifest(q_uri)) and not root.exists(_decision_uri(q_uri)):
        _decide(
            root, q_uri, "superseded", by=run_id or "pipeline", reason="a later run of the interval passed the gate"
        )


def _entry(root: DataRoot, model: str, q_uri: str) -> QuarantinedBatch:
    m = root.read_json(root.manifest(q_uri))
    q = m.get("quarantine", {})
    decision = root.read_json(_decision_uri(q_uri)) if root.exists(_decision_uri(q_uri)) else None
    return QuarantinedBatch(
        model=model,
        partition=m.get("partition", q_uri.rsplit("/", 1)[-1]),
        uri=q_uri,
        status=decision["decision"] if decision else "quarantined",
        stage=q.get("stage", "?"),
        reason=q.get("reason", "?"),
        failures=list(q.get("failures", [])),
        rows=m.get("rows"),
        run_id=m.get("run_id"),
        decision=decision,
    )


def list_quarantined(root: DataRoot, models: list[str], *, include_decided: bool = True) -> list[QuarantinedBatch]:
    """Every quarantined batch of the given models, oldest partition first."""
    out = []
    for model in models:
        for q_uri in root.list_partitions("quarantine", model):
            e = _entry(root, model, q_uri)
            if include_decided or e.status == "quarantined":
                out.append(e)
    return out


def get_quarantined(root: DataRoot, model: str, partition: str) -> QuarantinedBatch:
    """The quarantined batch of ``model`` at ``partition``; what ``show``, ``release`` and ``reject`` act on.

    The partition comes from a command line or a run conf, so it is checked first: only the partition
    keys the pipeline writes (:func:`airloop.confine.check_partition`), one folder inside the quarantine
    zone, never a path such as ``../../raw/...`` that reaches a published partition.

    :raises QuarantineError: not a partition name, or no quarantined batch there
    """
    from airloop.confine import UriRejected, check_partition

    try:
        check_partition(partition)
    except UriRejected as e:
        raise QuarantineError(f"{model}: {e}") from None
    q_uri = root.quarantine(model, partition)
    if not root.exists(root.manifest(q_uri)):
        known = [e.partition for e in list_quarantined(root, [model])]
        raise QuarantineError(f"no quarantined batch {model}/{partition}; quarantined partitions: {known or 'none'}")
    return _entry(root, model, q_uri)


def reject(root: DataRoot, model: str, partition: str, *, reason: str, by: str | None = None) -> dict[str, Any]:
    """Mark a quarantined batch as rejected for good (it stays on disk, and is never trained on)."""
    e = get_quarantined(root, model, partition)
    if e.status != "quarantined":
        raise QuarantineError(f"{model}/{partition} is already {e.status}: {e.decision}")
    if not reason.strip():
        raise QuarantineError("a rejection needs a reason (--reason), for the next person who looks")
    return _decide(root, e.uri, "rejected", by=by or getpass.getuser(), reason=reason)


def release(cfg: PipelineConfig, root: DataRoot, partition: str, *, by: str) -> dict[str, Any]:
    """Re-validate a quarantined batch with the current suite; if it passes, publish it to ``raw/``.

    :returns: the published manifest (as :func:`validate_partition` returns it)
    :raises QuarantineError: unknown, already decided, or unreadable batch
    :raises BatchValidationError: it still fails; it stays in quarantine with a fresh report
    """
    e = get_quarantined(root, cfg.name, partition)
    if e.status != "quarantined":
        raise QuarantineError(f"{cfg.name}/{partition} is {e.status}, not quarantined: {e.decision}")
    manifest = root.read_json(root.manifest(e.uri))
    data_file = manifest.get("data_file")
    if e.stage == "ingest" or not data_file:
        raise QuarantineError(
            f"{cfg.name}/{partition} could not be read as {cfg.source.format}; there is nothing to re-validate. "
            f"Get a valid file from the producer and re-run the interval (or trigger {cfg.dag_id('ingest')} "
            f"with source_uri), then reject this one."
        )
    data = root.read_bytes(f"{e.uri}/{data_file}")
    outcome = validate_frame(cfg, read_parquet_bytes(data), _context(cfg, root, partition, manifest))
    if not outcome.success:
        # Refresh the report in place so on-call sees the current verdict.
        root.write_json_atomic(f"{e.uri}/{VALIDATION_RESULT}", outcome.to_json())
        root.write_bytes_atomic(
            e.report_uri,
            render_html_report(cfg, partition, outcome, _report_context(manifest, quarantine=e.uri)).encode(),
        )
        raise BatchValidationError(
            failure_message(cfg, partition, outcome, e.uri, manifest.get("received_file")),
            summary=outcome.summary(),
            quarantine_uri=e.uri,
        )
    published = {k: v for k, v in manifest.items() if k != "quarantine"}
    published["released_from_quarantine"] = {"by": by, "uri": e.uri}
    raw_uri = root.raw(cfg.name, partition)
    root.write_partition(raw_uri, _batch_files(root, e.uri, manifest, data_file, data), published)
    report_uri = write_validation_report(cfg, root, partition, outcome, published)
    _decide(root, e.uri, "released", by=by, raw_uri=raw_uri)
    return {**published, "uri": raw_uri, "validation": outcome.summary(), "report_uri": report_uri}
