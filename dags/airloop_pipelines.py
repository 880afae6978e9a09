"""One DAG factory over the pipeline configs in include/airloop/pipelines/.

Every ``<model>.yaml`` there becomes that model's DAGs (``<model>__ingest``, ``<model>__release``, ...).
This file stays a config file: no I/O beyond reading those configs, no heavy imports.
"""

from airloop_airflow.dag_factory import build_pipeline_dags

globals().update(build_pipeline_dags())
