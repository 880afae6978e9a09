"""The hook of an airloop model server: its Airflow connection, turned into a :class:`ModelServerClient`."""

from __future__ import annotations

from airloop.serving.client import ModelServerClient
from airloop_airflow.hooks.http_service import HttpServiceHook


class ModelServerHook(HttpServiceHook):
    """The model server behind ``model_server_conn_id`` (``schema``, ``host``, ``port``; ``schema`` defaults
    to ``http``): scoring, ``/admin/reload``, ``/admin/weight``, ``/metrics`` and ``/health``.

    :param model_server_conn_id: the Airflow connection (a model's ``cfg.model_server_conn_id``)
    :param timeout: seconds for one attempt
    :param retries: attempts after the first, for a refused connection, a timeout or a 502/503/504
    """

    conn_name_attr = "model_server_conn_id"
    default_conn_name = "airloop_model_server"
    hook_name = "airloop model server"

    def __init__(self, model_server_conn_id: str | None = None, *, timeout: float = 30.0, retries: int = 2) -> None:
        super().__init__(model_server_conn_id, timeout=timeout, retries=retries)

    def get_conn(self) -> ModelServerClient:
        """A client of the server the connection names."""
        return ModelServerClient(self.base_url(), timeout=self.timeout, retries=self.retries)
