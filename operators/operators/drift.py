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
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk.exceptions import AirflowSkipException

from airloop_airflow.assets import model_asset
from airloop_airflow.base import ModelOperator, report_link
from airloop_airflow.links.ui import DRIFT_REPORT_KEY, DriftReportLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airloop.storage import DataRoot


def retrain_log_uri(root: DataRoot, model: str) -> str:
    return f"{root.uri}/reports/{model}/drift/retrain_log.jsonl"


def drift_context(result: dict[str, Any]) -> dict[str, Any]:
    """What the retraining run is told about the drift that caused it (small, JSON)."""
    drifted = {c: result["column_scores"][c] for c in result["drifted_columns"]}
    return {
        "model": result["model"],
        "champion_version": result["champion_version"],
        "drift_share": result["drift_share"],
        "dataset_drift": result["dataset_drift"],
        "drifted_columns": drifted,
        "prediction_score": result["prediction_score"],
        "prediction_drifted": result["prediction_drifted"],
        "report_uri": result["report_uri"],
        "reference": {"uri": result["reference_uri"], "rows": result["reference_rows"]},
        "current": {"start": result["interval_start"], "end": result["interval_end"], "rows": result["current_rows"]},
        "performance": result.get("performance"),
    }


class DriftCheckOperator(ModelOperator):
    """Compare the champion's reference with the data interval's traffic; report and record it."""

    operator_extra_links = (DriftReportLink(),)
    ui_color = "#fde8ef"

    def execute(self, context: Context) -> dict[str, Any]:
        import tempfile
        from pathlib import Path

        import mlflow
        import pandas as pd
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from airloop import drift
        from airloop.features import categorical_features, feature_columns

        cfg, root = self.pipeline(), self.root()
        start, end = context["data_interval_start"], context["data_interval_end"]
        start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
        client = MlflowClient()
        try:
            champion = client.get_model_version_by_alias(cfg.name, "champion")
        except MlflowException:
            raise AirflowSkipException(f"{cfg.name} has no @champion: nothing is served, nothing can drift") from None
        entries = drift.read_interval(root, cfg.name, start, end)
        if len(entries) < cfg.drift.min_rows:
            raise AirflowSkipException(
                f"{len(entries)} predictions with event time in [{start}, {end}); a verdict "
                f"needs {cfg.drift.min_rows} (drift.min_rows)"
            )
        with tempfile.TemporaryDirectory() as tmp:
            ref_path = mlflow.artifacts.download_artifacts(
                run_id=champion.run_id, artifact_path=drift.REFERENCE_ARTIFACT, dst_path=tmp
            )
            reference = pd.read_parquet(ref_path).rename(columns={cfg.task.target: "y"})
            current = drift.current_frame(entries, cfg)
            verdict, report = drift.compare(
                reference,
                current,
                feature_columns(cfg.features),
                categorical_features(cfg.features),
                cfg.drift,
                cfg.drift.seed,
                cfg.drift.sample_rows,
            )
            folder = f"{root.uri}/reports/{cfg.name}/drift/{start:%Y-%m-%d}"
            html = Path(tmp) / "drift_report.html"
            report.save_html(str(html))
            report_uri = f"{folder}/report.html"
            root.write_bytes_atomic(report_uri, html.read_bytes())
            client.log_artifact(champion.run_id, str(html), artifact_path=f"drift/{start:%Y-%m-%d}")
        result = drift.DriftResult(
            model=cfg.name,
            champion_version=str(champion.version),
            interval_start=start.isoformat(),
            interval_end=end.isoformat(),
            reference_uri=f"runs:/{champion.run_id}/{drift.REFERENCE_ARTIFACT}",
            reference_rows=len(reference),
            current_rows=len(current),
            seed=cfg.drift.seed,
            method={
                "num": cfg.drift.num_method,
                "cat": cfg.drift.cat_method,
                "column_threshold": cfg.drift.column_threshold,
                "column_thresholds": dict(cfg.drift.column_thresholds),
                "drift_share": cfg.drift.drift_share,
                "sample_rows": cfg.drift.sample_rows,
            },
            performance=drift.performance(cfg, root, current, reference),
            report_uri=report_uri,
            **verdict,
        )
        drift.record(root, result)
        history = drift.read_history(root, cfg.name)
        root.write_bytes_atomic(
            f"{root.uri}/reports/{cfg.name}/drift/trend.html", drift.trend_html(history, cfg.name).encode()
        )
        context["ti"].xcom_push(key=DRIFT_REPORT_KEY, value=report_link(root, report_uri))
        self.log.info(
            "Drift of %s v%s on %s .. %s (%d predictions, %d compared): share %.2f (dataset drift at %.2f) "
            "-> %s; drifted %s; prediction score %s; performance %s; report %s",
            cfg.name,
            champion.version,
            start.date(),
            end.date(),
            len(current),
            verdict["compared_rows"],
            verdict["drift_share"],
            cfg.drift.drift_share,
            "DRIFT" if result.drifting else "no drift",
            {c: verdict["column_scores"][c] for c in verdict["drifted_columns"]},
            verdict["prediction_score"],
            result.performance,
            report_uri,
        )
        return {k: v for k, v in result.to_dict().items() if k != "method"}


class RetrainOnDriftOperator(ModelOperator, TriggerDagRunOperator):
    """Trigger ``<model>__train`` with the drift context, at most once per cooldown, never twice at once."""

    def __init__(self, *, model: str, sensor_task_id: str = "watch_drift", **kwargs: Any) -> None:
        kwargs.setdefault("outlets", [model_asset(model, "drift")])
        super().__init__(model=model, trigger_dag_id=f"{model}__train", skip_when_already_exists=True, **kwargs)
        self.sensor_task_id = sensor_task_id

    def execute(self, context: Context) -> Any:
        cfg, root = self.pipeline(), self.root()
        ctx = context["ti"].xcom_pull(task_ids=self.sensor_task_id)
        if not ctx:
            raise AirflowSkipException("no drift context from the sensor")
        uri = retrain_log_uri(root, cfg.name)
        log = root.read_jsonl(uri)
        now = dt.datetime.now(dt.UTC)
        if log:
            last = log[-1]
            allowed = dt.datetime.fromisoformat(last["at"]) + dt.timedelta(hours=cfg.drift.cooldown_hours)
            if now < allowed:
                raise AirflowSkipException(
                    f"cooldown: drift already started retraining run {last['run_id']} at "
                    f"{last['at']}; the next one is allowed after {allowed.isoformat()} "
                    f"(drift.cooldown_hours={cfg.drift.cooldown_hours})"
                )
        busy = context["ti"].get_dr_count(dag_id=self.trigger_dag_id, states=["queued", "running"])
        if busy:
            raise AirflowSkipException(
                f"{busy} run(s) of {self.trigger_dag_id} already queued or running: not starting another"
            )
        run_id = f"drift__{ctx['current']['start'][:10]}__{context['run_id'][-8:]}"
        self.trigger_run_id = run_id
        self.conf = {"reason": "drift", "drift": ctx}
        root.write_jsonl_atomic(uri, [*log, {"at": now.isoformat(), "run_id": run_id, "drift": ctx}])
        context["outlet_events"][model_asset(cfg.name, "drift")].extra = ctx
        self.log.info("Triggering %s run %s with the drift context", self.trigger_dag_id, run_id)
        return super().execute(context)
