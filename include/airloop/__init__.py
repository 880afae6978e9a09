"""airloop domain code: everything the pipelines do, with no Airflow import.

Spark jobs, training images and the command line import this package; the Airflow-facing layer lives in
``airloop_airflow`` (the ``operators/`` folder).
"""

__version__ = "0.1.0"
