"""The hook of an airloop model server: its Airflow connection, turned into a :class:`ModelServerClient`."""

from __future__ import annotations

from airloop.serving.client import ModelServerClient
from airloop_airflow.hooks.http_service import HttpServiceHook, connection_url


class ModelServerHook(HttpServiceHook):
    """The model server behind ``model_server_conn_id`` (``schema``, ``host``, ``port``; ``schema`` defaults
    to ``http``; ``password``: the server's admin token): scoring, ``/admin/reload``, ``/admin/weight``,
    ``/metrics`` and ``/health``.

    :param conn_id: the Airflow connection (a model's ``cfg.model_server_conn_id``)
    """

    conn_name_attr = "model_server_conn_id"
    default_conn_name = "airloop_model_server"
    hook_name = "airloop model server"

    def get_conn(self) -> ModelServerClient:
        """A client of the server the connection names, with the connection's password as the admin token
        (the admin routes answer 401 without it)."""
        conn = self.get_connection(self.conn_id)
        url = connection_url(conn, self.default_scheme, self.default_port)
        return ModelServerClient(url, timeout=self.timeout, retries=self.retries, token=conn.password or None)
