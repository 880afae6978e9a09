"""Extra links shown on task instances in the Airflow UI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink, BaseXCom

# (the `type: ignore[arg-type]` below: Airflow annotates get_link with TaskInstanceKey, a NamedTuple, and
# BaseXCom.get_value with a protocol of settable fields that a NamedTuple cannot satisfy)

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: XCom key under which a task pushes the address of its validation report.
REPORT_URL_KEY = "validation_report_url"
#: XCom key under which a drift check pushes the address of its Evidently report.
DRIFT_REPORT_KEY = "drift_report_url"
#: XCom key under which training and gate tasks push the MLflow UI address of their run / model version.
MLFLOW_URL_KEY = "mlflow_url"
#: The plugin's route that serves reports from the data root (see ``plugins/airloop_plugin.py``).
REPORTS_ROUTE = "/airloop/files"


def ui_base_url() -> str:
    """The Airflow UI's address (``[api] base_url``), for links that leave the UI (alerts, webhook answers)."""
    from airflow.configuration import conf

    return conf.get("api", "base_url", fallback="http://localhost:8080").rstrip("/")


def report_url(relative_path: str) -> str:
    """The UI address of a file under the data root, as served by the airloop plugin."""
    return f"{REPORTS_ROUTE}/{relative_path.lstrip('/')}"


class ValidationReportLink(BaseOperatorLink):
    """ "Validation report": the HTML report of the batch this task validated (or quarantined)."""

    name = "Validation report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return BaseXCom.get_value(ti_key=ti_key, key=REPORT_URL_KEY) or ""  # type: ignore[arg-type]


class DriftReportLink(BaseOperatorLink):
    """ "Drift report": the Evidently HTML report of this drift check."""

    name = "Drift report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return BaseXCom.get_value(ti_key=ti_key, key=DRIFT_REPORT_KEY) or ""  # type: ignore[arg-type]


#: The plugin's route that finds the runbook of a task's failure (see ``plugins/airloop_plugin.py``).
RUNBOOK_FOR_TASK_ROUTE = "/airloop/runbooks/for-task"


class RunbookLink(BaseOperatorLink):
    """ "Runbook": what this task's failure means and the commands that recover from it (on every task;
    the plugin picks the runbook from the task's alert, or from the task when it has not failed)."""

    name = "Runbook"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from urllib.parse import urlencode

        query = {"dag_id": ti_key.dag_id, "run_id": ti_key.run_id, "task_id": ti_key.task_id}
        return f"{RUNBOOK_FOR_TASK_ROUTE}?{urlencode(query)}"


def mlflow_ui_url(fragment: str) -> str | None:
    """The MLflow UI address of ``#/...`` when the tracking URI is an MLflow server (``AIRLOOP_MLFLOW_UI_URL``
    overrides it, e.g. when tasks reach the server at an internal address); None for a database store."""
    import os

    base = os.environ.get("AIRLOOP_MLFLOW_UI_URL") or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not base.startswith(("http://", "https://")):
        return None
    return f"{base.rstrip('/')}/#/{fragment.lstrip('/')}"


class MlflowLink(BaseOperatorLink):
    """ "MLflow": the MLflow run this task trained, or the model version it gated or deployed."""

    name = "MLflow"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return BaseXCom.get_value(ti_key=ti_key, key=MLFLOW_URL_KEY) or ""  # type: ignore[arg-type]
