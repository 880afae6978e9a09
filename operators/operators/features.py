"""The feature job operator: submits ``include/airloop/spark/build_features.py`` with SparkSubmitOperator.

The Spark provider's module imports the Kubernetes client, which must not load while DAG files are
parsed; so this operator is light at parse time and builds the ``SparkSubmitOperator`` inside
``execute``, then runs it in the same task. The master comes from the ``spark_default`` connection:
``local[2]`` locally (``airflow_settings.yaml``), ``spark://...`` or ``k8s://...`` in production.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowSkipException

from airloop_airflow.assets import model_asset
from airloop_airflow.base import ModelOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


def partitions_to_build(context: Context, model: str, data_root: str) -> list[str]:
    """Partitions to build, oldest first: ``partitions`` from the run conf (a manual rebuild), else those
    announced by the triggering ``<model>.validated`` events plus any validated partition whose features
    are missing or stale (events that arrive during a run are folded into one later run by Airflow, so
    the events alone could leave a partition behind). Only partitions that passed the gate for their
    current content are ever returned (a batch re-ingested and quarantined since its event is dropped).
    """
    from airloop.catalog import stale_feature_partitions, validated_partitions
    from airloop.config import get_pipeline
    from airloop.features import feature_version
    from airloop.storage import DataRoot

    cfg = get_pipeline(model)
    root = DataRoot(data_root)
    valid = set(validated_partitions(root, model))
    run = context.get("dag_run")
    conf = (run.conf if run else None) or {}
    if conf.get("partitions"):
        wanted = set(conf["partitions"])
    else:
        wanted = set(stale_feature_partitions(root, model, feature_version(cfg.features, cfg.feature_search_dirs)))
        for asset, evs in (context.get("triggering_asset_events") or {}).items():
            if getattr(asset, "name", "") == f"{model}.validated":
                wanted.update(e.extra["partition"] for e in evs if e.extra and e.extra.get("partition"))
    return sorted(wanted & valid)


class FeatureJobOperator(ModelOperator):
    """Build feature partitions for the validated partitions of this run with Spark.

    :param conn_id: Spark connection (templated); ``spark_default``
    :param spark_conf: extra Spark configuration
    """

    template_fields: Sequence[str] = (*ModelOperator.template_fields, "conn_id")
    ui_color = "#fdf0e8"

    def __init__(
        self, *, conn_id: str = "spark_default", spark_conf: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        model = kwargs["model"]
        kwargs.setdefault("outlets", [model_asset(model, "features")])
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.spark_conf = spark_conf or {}

    def spark_submit_operator(self, partitions: list[str], result_file: str) -> Any:
        from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

        from airloop.spark import build_features as job

        return SparkSubmitOperator(
            task_id=f"{self.task_id}__spark_submit",
            conn_id=self.conn_id,
            application=job.__file__,
            name=f"airloop-features-{self.model}",
            application_args=[
                "--model",
                self.model,
                "--data-root",
                self.root().uri,
                "--partitions",
                ",".join(partitions),
                "--result-file",
                result_file,
            ],
            conf={
                **job.spark_conf(),
                "spark.pyspark.python": sys.executable,
                "spark.pyspark.driver.python": sys.executable,
                **self.spark_conf,
            },
            env_vars={
                "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
                "AIRLOOP_DATA_ROOT": self.root().uri,
            },
        )

    def execute(self, context: Context) -> dict[str, Any]:
        cfg = self.pipeline()
        partitions = partitions_to_build(context, cfg.name, self.root_uri())
        if not partitions:
            raise AirflowSkipException("nothing to build: no validated partition is new or stale")
        # spark-submit is found on PATH: make it the one beside this interpreter
        bin_dir = str(Path(sys.executable).parent)
        if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
        self.log.info("Building features of %s for %d partition(s): %s", cfg.name, len(partitions), partitions)
        with tempfile.TemporaryDirectory() as tmp:
            result_file = f"{tmp}/result.json"
            submit = self.spark_submit_operator(partitions, result_file)
            try:
                submit.execute(context)
            except Exception as e:  # the driver's own error first (its traceback's last line), then the command
                from airloop_airflow.notifiers.alerts import spark_job_failure

                shown = ", ".join(partitions[:5]) + (
                    f", ... ({len(partitions) - 5} more)" if len(partitions) > 5 else ""
                )
                raise spark_job_failure(
                    e,
                    getattr(getattr(submit, "_hook", None), "_last_submit_log_lines", None) or (),
                    job=f"The feature job of {cfg.name} on {len(partitions)} partition(s) ({shown})",
                    details={"partitions": partitions},
                ) from e
            manifests = json.loads(Path(result_file).read_text())
        extra = {
            "partitions": [m["partition"] for m in manifests],
            "uris": [m["uri"] for m in manifests],
            "rows": sum(m["rows"] for m in manifests),
            "labelled_rows": sum(m["labelled_rows"] for m in manifests),
            "feature_version": manifests[0]["feature_version"],
            "source_content_hashes": {m["partition"]: m["source_content_hash"] for m in manifests},
        }
        context["outlet_events"][model_asset(cfg.name, "features")].extra = extra
        return extra
