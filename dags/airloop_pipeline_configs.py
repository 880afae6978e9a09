"""Reports broken pipeline configs as this file's import error; defines no DAG.

Airflow records an import error per DAG file and marks every DAG of a file that has one stale, so the
error naming a broken ``<model>.yaml`` and its bad fields is raised here, apart from the factory
(``airloop_pipelines.py``), whose other models' DAGs keep loading and running.
"""

from airloop_airflow.dag_factory import check_pipeline_configs

check_pipeline_configs()
