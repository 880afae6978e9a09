"""One DAG factory over the pipeline configs in include/airloop/pipelines/ (or AIRLOOP_PIPELINES_DIR).

Every valid ``<model>.yaml`` there becomes that model's DAGs (``<model>__ingest``, ``<model>__release``, ...).
A broken YAML is left out here and reported by ``airloop_pipeline_configs.py``: an import error in this
file would make Airflow mark every model's DAGs stale.
This file stays a config file: no I/O beyond reading those configs, no heavy imports.
"""

from airloop_airflow.dag_factory import build_pipeline_dags

globals().update(build_pipeline_dags())
