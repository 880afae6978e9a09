"""Hooks for the external systems airloop calls over HTTP: each owns its Airflow connection, timeout and
retries, and hands out a client built on :class:`airloop.http.HttpClient`."""
