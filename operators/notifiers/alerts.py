"""On-call alerts for failed tasks: one alert per failed task, to every channel in the model's config.

Every airloop DAG sets :class:`AirloopFailureNotifier` as ``on_failure_callback`` (``dag_factory``), so it
runs once, when a task has failed for good (after its retries; a retry is not a failure). The alert says
which model, DAG, task and try, explains the failure (the task's own message: failed expectations, gate
scores, canary figures, ...), links the task's log in the Airflow UI and the runbook of that kind of
failure. Channels: the local alert log (``reports/<model>/alerts.jsonl``, the default), Slack through the
Slack provider's incoming-webhook hook, and a generic HTTP webhook (JSON POST, ``hooks/alert_webhook.py``).
One channel failing never stops the others, and never changes the task's outcome.

Operators that fail on a verdict raise :class:`OnCallFailure` with the failure kind and the figures that
decided it, and operators whose external job failed raise :class:`JobFailure` (a spark-submit run:
:func:`spark_job_failure`); other failures are classified from the exception and its causes (a domain
error's ``runbook_kind``, a pod that never started, a spark-submit failure), and only then from the task,
where the task's failure can only mean one thing. A verdict (gate refused, canary rolled back, batch
quarantined) is never inferred from the task: a deploy that could not reach the model server is a failed
deploy, not a rollback.

Every alert leads with the root error (:func:`root_error`): the innermost exception of the chain, or the
job's own error found in its output (the last line of the Python traceback inside a spark-submit failure),
then the outer message, so the reader sees ``KeyError: '<column>'`` before a spark-submit command line.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier
from airflow.sdk.exceptions import AirflowException, AirflowFailException

if TYPE_CHECKING:
    from types import TracebackType

    from airflow.sdk import Context

    from airloop.config import PipelineConfig
    from airloop.storage import DataRoot

log = logging.getLogger(__name__)

#: the runbook of each task: its **Runbook** link (``plugins/airloop_plugin.py``), and its alert's kind when
#: neither the exception nor ``FAULT_KINDS`` says otherwise
TASK_KINDS = {
    "ingest_batch": "rerun_interval",
    "validate_batch": "batch_quarantined",
    "release_batch": "batch_quarantined",
    "build_features": "feature_job_failed",
    "gate_challenger": "gate_refused",
    "start_canary": "deploy_failed",
    "watch_canary": "deploy_failed",
    "conclude_canary": "canary_rollback",
    "rollback_champion": "model_rollback",
}
#: a verdict is only ever declared by the code that reached it (``OnCallFailure``, ``runbook_kind``): the
#: same task failing on anything else (a crash, an unreachable service) failed on a fault
FAULT_KINDS = {
    "validate_batch": "rerun_interval",
    "gate_challenger": "rerun_interval",
    "conclude_canary": "deploy_failed",
}
#: the Kubernetes provider's exceptions for a pod that never started (matched by name: the provider is
#: only imported where a cluster is configured); airloop's own errors carry ``runbook_kind`` themselves
POD_PENDING_EXCEPTIONS = ("PodLaunchTimeoutException", "PodLaunchFailedException")
#: the Spark provider's failed spark-submit run ("Cannot execute: spark-submit ... Error code is: 1."), and
#: the header of the submit output it appends
SPARK_SUBMIT_FAILED = re.compile(r"Cannot execute: \S*spark\d?-submit\b.*?Error code is: (-?\d+)", re.S)
SPARK_OUTPUT_HEADER = "Last spark-submit output:"
#: where the Spark provider's modules live (its other failures: no driver id, a failed driver pod, ...)
SPARK_PROVIDER_PATH = "/providers/apache/spark/"
MAX_ERROR_CHARS = 4000
#: the summary: the root error, then the outer message (each cut to this many characters)
MAX_ROOT_CHARS, MAX_OUTER_CHARS = 300, 200


class OnCallFailure(AirflowFailException):
    """A verdict, not a fault: the task fails without retry, and its alert carries ``kind`` (which runbook)
    and ``details`` (the figures that decided it)."""

    def __init__(self, message: str, *, kind: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.kind = kind
        self.details = details or {}


class JobFailure(AirflowException):
    """An external job failed (a spark-submit run, ...): a fault, retried like any other, whose alert is of
    ``kind`` and leads with ``root_error``, the job's own error found in its output."""

    def __init__(self, message: str, *, kind: str, root_error: str = "", details: dict[str, Any] | None = None):
        super().__init__(message)
        self.kind = kind
        self.root_error = root_error
        self.details = details or {}


def _raised_in(tb: TracebackType | None, path: str) -> bool:
    while tb is not None:
        if path in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False


def _spark_submit_failed(exc: BaseException) -> bool:
    return bool(SPARK_SUBMIT_FAILED.search(str(exc))) or _raised_in(exc.__traceback__, SPARK_PROVIDER_PATH)


def root_error(exc: BaseException) -> str:
    """The error that started a failure, in one line: a job's own error found in its output (the Python
    traceback's last line inside a spark-submit failure, or the ``root_error`` its operator found), else
    the innermost exception of the chain (``__cause__`` / ``__context__``), as ``Type: message``."""
    from airloop.alerts import error_in_output, exception_chain, one_line

    chain = exception_chain(exc)
    for e in reversed(chain):
        text = str(e)
        _, header, output = text.partition(SPARK_OUTPUT_HEADER)
        found = getattr(e, "root_error", None) or (
            error_in_output(output, bare_lines=True) if header else error_in_output(text)
        )
        if found:
            return found
    for e in reversed(chain):
        if m := SPARK_SUBMIT_FAILED.search(str(e)):
            return (
                f"spark-submit exited with code {m.group(1)} and its output names no Python or JVM error "
                "(the driver's log has it: the task log in client mode, the driver pod's in cluster mode)"
            )
    return one_line(chain[-1], bare=(AirflowException,))


def spark_job_failure(
    exc: BaseException,
    output: Iterable[str] = (),
    *,
    job: str,
    kind: str = "feature_job_failed",
    details: dict[str, Any] | None = None,
) -> JobFailure:
    """What a task raises when its spark-submit run failed (``raise spark_job_failure(e, ...) from e``):
    what failed and the driver's own error, found in ``output`` (the submit output the provider's hook
    kept) or in the provider's message, then the provider's message (the command line, its output).

    :param job: what ran, for people: "The feature job of <model> on 2 partition(s) (...)"
    """
    from airloop.alerts import error_in_output

    text = str(exc)
    root = error_in_output("\n".join(output), bare_lines=True) or root_error(exc)
    code = SPARK_SUBMIT_FAILED.search(text)
    how = f"spark-submit exited with code {code.group(1)}" if code else f"spark-submit failed ({type(exc).__name__})"
    return JobFailure(
        f"{job} failed: {how}.\nDriver error: {root}\nThe driver's traceback is in the spark-submit output "
        f"(the task log); fix its cause, then rebuild (runbook: {kind}).\n\n{text}",
        kind=kind,
        root_error=root,
        details={**(details or {}), "exit_code": int(code.group(1)) if code else None},
    )


def classify(task_id: str, exc: BaseException | None) -> tuple[str, dict[str, Any]]:
    """The failure kind (a key of ``airloop.runbooks.RUNBOOKS``) and the details the exception carries:
    from the exception and its causes first, from the task only where its exception names nothing."""
    from airloop.alerts import exception_chain

    chain = exception_chain(exc)
    for e in chain:
        if isinstance(e, OnCallFailure | JobFailure):
            return e.kind, e.details
    for e in chain:
        kind = getattr(e, "runbook_kind", None) or (
            "training_pod_pending" if type(e).__name__ in POD_PENDING_EXCEPTIONS else None
        )
        if kind:
            details = {}
            if summary := getattr(e, "summary", None):
                details["validation"] = summary
            if uri := getattr(e, "quarantine_uri", ""):
                details["quarantine_uri"] = uri
            return kind, details
    if any(_spark_submit_failed(e) for e in chain):
        return "feature_job_failed", {}
    return FAULT_KINDS.get(task_id) or TASK_KINDS.get(task_id) or "rerun_interval", {}


def _message(line: str) -> str:
    return line.split(": ", 1)[1] if re.match(r"^[\w.]+: ", line) else line


def _restates(line: str, root: str) -> bool:
    """Whether the one-line ``line`` says no more than ``root``: it repeats it (an operator's failure
    raised with its cause's message), or wraps it in a few words (``URLError: <urlopen error [Errno 111]
    Connection refused>`` after ``ConnectionRefusedError: [Errno 111] Connection refused``)."""
    outer, core = _message(line), _message(root)
    return outer in root or (core in outer and len(outer) - len(core) <= max(20, len(core)))


def _without_tail(outer: str, root: str) -> str:
    """``outer`` without a copy of the root error at its end (an HTTP client's ``POST <url>: no answer:
    ConnectionRefusedError: ...`` after that ``ConnectionRefusedError``)."""
    return outer[: -len(root)].rstrip(" :") if outer.endswith(root) and outer != root else outer


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def runbook_url(kind: str) -> str:
    """The rendered runbook of a failure kind on the API server (the airloop plugin serves it)."""
    from airloop_airflow.links.ui import ui_base_url

    return f"{ui_base_url()}/airloop/runbooks/{kind}"


def build_alert(context: Context, model: str) -> dict[str, Any]:
    """The alert of a failed task, from its context (no I/O)."""
    from airloop.alerts import one_line
    from airloop.runbooks import RUNBOOKS

    ti, exc = context["ti"], context.get("exception")
    if isinstance(exc, BaseException):
        kind, details = classify(ti.task_id, exc)
        error = str(exc).strip() or type(exc).__name__
        root, outer = root_error(exc), one_line(exc, bare=(AirflowException,))
        headline = _clip(root, MAX_ROOT_CHARS)
        if not _restates(outer, root):
            headline += f" | {_clip(_without_tail(outer, root), MAX_OUTER_CHARS)}"
        if root not in "\n".join(error.splitlines()[:2]):  # the root error on top of the full text
            error = f"{root}\n{error}"
    else:  # failed outside the task process: killed, out of memory, heartbeat lost
        kind, details = classify(ti.task_id, None)
        error = str(exc or "the task process ended without reporting (killed, out of memory, or lost heartbeat)")
        root = headline = (error.strip().splitlines() or [error])[0][:MAX_ROOT_CHARS]
    return {
        "model": model,
        "kind": kind,
        "summary": f"{ti.dag_id}.{ti.task_id} failed (try {ti.try_number}): {headline}",
        "root_error": root,
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "run_id": ti.run_id,
        "try_number": ti.try_number,
        "error": error[:MAX_ERROR_CHARS],
        "error_type": type(exc).__name__ if isinstance(exc, BaseException) else None,
        "details": details,
        "log_url": getattr(ti, "log_url", None),  # (a callback run outside the task process may lack it)
        "runbook": f"include/runbooks/{RUNBOOKS[kind]}",
        "runbook_url": runbook_url(kind),
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def slack_text(alert: dict[str, Any]) -> str:
    """The Slack message: what failed, why, and the two links on-call needs."""
    error = alert["error"] if len(alert["error"]) < 1500 else alert["error"][:1500] + " ..."
    return (
        f":red_circle: *{alert['model']}*: `{alert['dag_id']}.{alert['task_id']}` failed "
        f"(try {alert['try_number']}, run `{alert['run_id']}`)\n```{error}```\n"
        f"<{alert['log_url']}|Task log> · <{alert['runbook_url']}|Runbook: {alert['kind'].replace('_', ' ')}>"
    )


def send_slack(conn_id: str, alert: dict[str, Any], channel: str | None = None) -> None:
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    kwargs: dict[str, Any] = {"channel": channel} if channel else {}
    SlackWebhookHook(slack_webhook_conn_id=conn_id).send(text=slack_text(alert), **kwargs)


def send_http(conn_id: str, alert: dict[str, Any]) -> None:
    """POST the alert as JSON to the webhook of connection ``conn_id`` (:class:`AlertWebhookHook`)."""
    from airloop_airflow.hooks.alert_webhook import AlertWebhookHook

    AlertWebhookHook(conn_id).send(alert)


def deliver(cfg: PipelineConfig, alert: dict[str, Any], root: DataRoot) -> dict[str, str]:
    """Send to every configured channel; returns channel -> "sent" or the reason it was not."""
    from airloop.alerts import append_alert

    outcome: dict[str, str] = {}
    for channel in cfg.alerts.channels:
        try:
            if channel == "log":
                append_alert(root, alert)
            elif channel == "slack":
                send_slack(cfg.alerts.slack_conn_id, alert, cfg.alerts.slack_channel)
            elif channel == "http":
                send_http(cfg.alerts.http_conn_id, alert)
            outcome[channel] = "sent"
        except Exception as e:  # one channel down must not silence the others
            log.error("alert channel %s failed for %s.%s: %s", channel, alert["dag_id"], alert["task_id"], e)
            outcome[channel] = f"failed: {e}"
    return outcome


class AirloopFailureNotifier(BaseNotifier):
    """``on_failure_callback`` of every airloop task: one alert per failed task (see the module doc)."""

    template_fields = ()

    def notify(self, context: Context) -> None:
        from airloop.config import get_pipeline
        from airloop.storage import DataRoot, default_data_root_uri

        task = context.get("task")
        model = getattr(task, "model", None) or context["ti"].dag_id.split("__")[0]
        try:
            cfg = get_pipeline(model)
        except Exception as e:
            log.error("no pipeline config for %s, alert not sent: %s", model, e)
            return
        alert = build_alert(context, cfg.name)
        root_of = getattr(task, "root", None)
        root = root_of() if callable(root_of) else DataRoot(default_data_root_uri())
        outcome = deliver(cfg, alert, root)
        log.warning(
            "On-call alert (%s) for %s.%s: %s -> %s",
            alert["kind"],
            alert["dag_id"],
            alert["task_id"],
            alert["summary"],
            outcome,
        )
