"""airloop's Airflow-facing layer (the ``operators/`` folder, importable as ``airloop_airflow``).

Shaped like an Airflow provider: operators, asset definitions, extra links and the DAG builders, each a
small adapter around the Airflow-free domain code in ``airloop`` (``include/airloop``). Nothing here
imports pandas, GX or other heavy libraries at module level: DAG files import this package while parsing.
"""
