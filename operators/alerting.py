"""On-call alerts for failed tasks: one alert per failed task, to every channel in the model's config.

Every airloop DAG sets :class:`AirloopFailureNotifier` as ``on_failure_callback`` (``dag_factory``), so it
runs once, when a task has failed for good (after its retries; a retry is not a failure). The alert says
which model, DAG, task and try, explains the failure (the task's own message: failed expectations, gate
scores, canary figures, ...), links the task's log in the Airflow UI and the runbook of that kind of
failure. Channels: the local alert log (``reports/<model>/alerts.jsonl``, the default), Slack through the
Slack provider's incoming-webhook hook, and a generic HTTP webhook (JSON POST). One channel failing never
stops the others, and never changes the task's outcome.

Operators that fail on a verdict raise :class:`OnCallFailure` with the failure kind and the figures that
decided it; other failures are classified from the exception (and its causes) and the task.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier
from airflow.sdk.exceptions import AirflowFailException

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airloop.config import PipelineConfig
    from airloop.storage import DataRoot

log = logging.getLogger(__name__)

#: what a task's failure means when its exception does not say: task id -> failure kind (runbook)
TASK_KINDS = {
    "ingest_batch": "rerun_interval",
    "validate_batch": "batch_quarantined",
    "release_batch": "batch_quarantined",
    "gate_challenger": "gate_refused",
    "start_canary": "canary_rollback",
    "watch_canary": "canary_rollback",
    "conclude_canary": "canary_rollback",
    "rollback_champion": "model_rollback",
}
#: the Kubernetes provider's exceptions for a pod that never started (matched by name: the provider is
#: only imported where a cluster is configured); airloop's own errors carry ``runbook_kind`` themselves
POD_PENDING_EXCEPTIONS = ("PodLaunchTimeoutException", "PodLaunchFailedException")
MAX_ERROR_CHARS = 4000


class OnCallFailure(AirflowFailException):
    """A verdict, not a fault: the task fails without retry, and its alert carries ``kind`` (which runbook)
    and ``details`` (the figures that decided it)."""

    def __init__(self, message: str, *, kind: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.kind = kind
        self.details = details or {}


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 10:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def classify(task_id: str, exc: BaseException | None) -> tuple[str, dict[str, Any]]:
    """The failure kind (a key of ``airloop.runbooks.RUNBOOKS``) and the details the exception carries."""
    for e in _chain(exc):
        if isinstance(e, OnCallFailure):
            return e.kind, e.details
    for e in _chain(exc):
        kind = getattr(e, "runbook_kind", None) or (
            "training_pod_pending" if type(e).__name__ in POD_PENDING_EXCEPTIONS else None)
        if kind:
            details = {}
            if summary := getattr(e, "summary", None):
                details["validation"] = summary
            if uri := getattr(e, "quarantine_uri", ""):
                details["quarantine_uri"] = uri
            return kind, details
    return TASK_KINDS.get(task_id, "rerun_interval"), {}


def runbook_url(kind: str) -> str:
    """The rendered runbook of a failure kind on the API server (the airloop plugin serves it)."""
    from airloop_airflow.links import ui_base_url

    return f"{ui_base_url()}/airloop/runbooks/{kind}"


def build_alert(context: Context, model: str) -> dict[str, Any]:
    """The alert of a failed task, from its context (no I/O)."""
    from airloop.runbooks import RUNBOOKS

    ti, exc = context["ti"], context.get("exception")
    kind, details = classify(ti.task_id, exc if isinstance(exc, BaseException) else None)
    if isinstance(exc, BaseException):
        error = str(exc) or type(exc).__name__
    else:  # failed outside the task process: killed, out of memory, heartbeat lost
        error = str(exc or "the task process ended without reporting (killed, out of memory, or lost heartbeat)")
    headline = (error.strip().splitlines() or [error])[0][:300]
    return {
        "model": model,
        "kind": kind,
        "summary": f"{ti.dag_id}.{ti.task_id} failed (try {ti.try_number}): {headline}",
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
    return (f":red_circle: *{alert['model']}*: `{alert['dag_id']}.{alert['task_id']}` failed "
            f"(try {alert['try_number']}, run `{alert['run_id']}`)\n```{error}```\n"
            f"<{alert['log_url']}|Task log> · <{alert['runbook_url']}|Runbook: {alert['kind'].replace('_', ' ')}>")


def send_slack(conn_id: str, alert: dict[str, Any], channel: str | None = None) -> None:
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    kwargs = {"channel": channel} if channel else {}
    SlackWebhookHook(slack_webhook_conn_id=conn_id).send(text=slack_text(alert), **kwargs)


def send_http(conn_id: str, alert: dict[str, Any]) -> None:
    """POST the alert as JSON to the connection's URL (``host`` holding a full URL, or host/port/schema);
    a password is sent as a bearer token."""
    import requests
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    host = conn.host or ""
    if "://" in host:
        url = host
    else:
        url = f"{conn.schema or 'https'}://{host}{f':{conn.port}' if conn.port else ''}{conn.extra_dejson.get('endpoint', '')}"
    headers = {"Content-Type": "application/json"}
    if conn.password:
        headers["Authorization"] = f"Bearer {conn.password}"
    r = requests.post(url, data=json.dumps(alert, default=str), headers=headers, timeout=10)
    r.raise_for_status()


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
        root = task.root() if hasattr(task, "root") else DataRoot(default_data_root_uri())
        outcome = deliver(cfg, alert, root)
        log.warning("On-call alert (%s) for %s.%s: %s -> %s", alert["kind"], alert["dag_id"], alert["task_id"],
                    alert["summary"], outcome)
