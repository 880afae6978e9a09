"""The local stack and the ``airloop`` command line: they run Airflow, so they live apart from the Airflow-free
domain package ``airloop``."""
