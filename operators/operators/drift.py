"""The drift loop: ``check_drift`` >> ``watch_drift`` >> ``trigger_retrain``.

* ``check_drift`` compares the champion's training reference (found through its MLflow run) with the
  interval's logged traffic (``airloop.drift``), stores the Evidently HTML report in the data root and on
  the champion's MLflow run, appends the figures to the model's drift history and redraws its trend plot.
* ``watch_drift`` is the drift sensor (reschedule mode: no worker slot held while it waits): it succeeds
  when the model's latest drift result crosses the thresholds, and skips at once when the result for
  this interval is in and says no drift.
* ``trigger_retrain`` starts ``<model>__train`` with conf ``{"reason": "drift", "drift": <context>}`` and
  puts the same context on an Asset event ``<model>.drift``; a cooldown from the config makes repeated
  drift start at most one retraining, and a retraining run already queued or running is never doubled.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airloop_airflow.assets import model_asset
from airloop_airflow.base import ModelOperator, report_link
from airloop_airflow.hooks.mlflow import uses_mlflow
from airloop_airflow.links.ui import DRIFT_REPORT_KEY, DriftReportLink

if TYPE_CHECKING:
    from airflow.sdk import Context


class DriftCheckOperator(ModelOperator):
    """Compare the champion's reference with the data interval's traffic; report and record it."""

    operator_extra_links = (DriftReportLink(),)
    ui_color = "#fde8ef"

    @uses_mlflow
    def execute(self, context: Context) -> dict[str, Any]:
        from airloop import drift

        cfg, root = self.pipeline(), self.root()
        start, end = data_interval(context)
        try:
            result = drift.check_interval(cfg, root, start, end)
        except drift.NoVerdict as e:
            raise AirflowSkipException(str(e)) from None
        if result.report_uri:
            context["ti"].xcom_push(key=DRIFT_REPORT_KEY, value=report_link(root, result.report_uri))
        self.log.info("Drift of %s", result.summary())
        return {k: v for k, v in result.to_dict().items() if k != "method"}


def data_interval(context: Context) -> tuple[dt.datetime, dt.datetime]:
    """The run's data interval, in UTC."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is None or end is None:
        raise AirflowFailException("a drift check needs a data interval: this run has none (run it on its schedule)")
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


class RetrainOnDriftOperator(ModelOperator, TriggerDagRunOperator):
    """Trigger ``<model>__train`` with the drift context, at most once per cooldown, never twice at once."""

    # both bases declare template_fields; the model is the one templated here (the trigger's own are fixed)
    template_fields: Sequence[str] = ("model",)

    def __init__(self, *, model: str, sensor_task_id: str = "watch_drift", **kwargs: Any) -> None:
        kwargs.setdefault("outlets", [model_asset(model, "drift")])
        super().__init__(model=model, trigger_dag_id=f"{model}__train", skip_when_already_exists=True, **kwargs)
        self.sensor_task_id = sensor_task_id

    def execute(self, context: Context) -> Any:
        from airloop.drift import record_retrain, retrain_cooldown

        cfg, root = self.pipeline(), self.root()
        ctx = context["ti"].xcom_pull(task_ids=self.sensor_task_id)
        if not ctx:
            raise AirflowSkipException("no drift context from the sensor")
        now = dt.datetime.now(dt.UTC)
        held = retrain_cooldown(root, cfg.name, now, cfg.drift.cooldown_hours)
        if held:
            raise AirflowSkipException(held)
        busy = context["ti"].get_dr_count(dag_id=self.trigger_dag_id, states=["queued", "running"])
        if busy:
            raise AirflowSkipException(
                f"{busy} run(s) of {self.trigger_dag_id} already queued or running: not starting another"
            )
        run_id = f"drift__{ctx['current']['start'][:10]}__{context['run_id'][-8:]}"
        self.trigger_run_id = run_id
        self.conf = {"reason": "drift", "drift": ctx}
        record_retrain(root, cfg.name, now, run_id, ctx)
        context["outlet_events"][model_asset(cfg.name, "drift")].extra = ctx
        self.log.info("Triggering %s run %s with the drift context", self.trigger_dag_id, run_id)
        return super().execute(context)
