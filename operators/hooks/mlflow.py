"""The hook of the MLflow tracking server: its address and the tasks' credentials, from one Airflow connection.

MLflow's clients (``MlflowClient()``, ``mlflow.pyfunc.load_model``, the training process) take the server and
the user from ``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``; an
operator that talks to MLflow runs that part inside :func:`mlflow_credentials`, which sets them from the
connection for its duration (a subprocess started inside inherits them) and restores the environment after.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from airloop_airflow.hooks.http_service import connection_url

#: the connection the local stack defines (``AIRFLOW_CONN_AIRLOOP_MLFLOW``) and a deployment provides
DEFAULT_CONN_ID = "airloop_mlflow"
#: what :meth:`MlflowHook.tracking_env` sets
TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")

F = TypeVar("F", bound=Callable[..., Any])


class MlflowHook(BaseHook):
    """The MLflow tracking server behind ``mlflow_conn_id``: ``schema`` (default ``http``), ``host`` and
    ``port``, or a full tracking URI in ``host`` (``https://...``, ``sqlite:///...``); ``login`` and
    ``password`` are the MLflow user (basic auth).

    :param conn_id: the Airflow connection (default ``airloop_mlflow``)
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "http"
    hook_name = "MLflow tracking server"

    def __init__(self, conn_id: str | None = None) -> None:
        super().__init__()
        self.conn_id = conn_id or self.default_conn_name

    def tracking_env(self) -> dict[str, str]:
        """``MLFLOW_TRACKING_URI`` and, when the connection has them, ``MLFLOW_TRACKING_USERNAME`` and
        ``MLFLOW_TRACKING_PASSWORD``.

        :raises airflow.sdk.exceptions.AirflowNotFoundException: no such connection
        """
        conn = self.get_connection(self.conn_id)
        env = {"MLFLOW_TRACKING_URI": connection_url(conn, "http")}
        if conn.login:
            env["MLFLOW_TRACKING_USERNAME"] = conn.login
        if conn.password:
            env["MLFLOW_TRACKING_PASSWORD"] = conn.password
        return env

    def get_conn(self) -> dict[str, str]:
        return self.tracking_env()


def _connection_defined(conn_id: str) -> bool:
    try:
        BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return False
    return True


@contextlib.contextmanager
def mlflow_credentials(conn_id: str = DEFAULT_CONN_ID) -> Iterator[dict[str, str]]:
    """Run the block with the MLflow server and user of ``conn_id`` in the environment; yield what was set.

    Without that connection the block runs with the process's own ``MLFLOW_TRACKING_*`` environment, unchanged
    (a deployment that configures MLflow that way, or ``dag.test`` against a local store); a server that needs
    credentials then answers 401, and the task fails saying so. Credentials of a connection never leak into
    the environment of a later block: the previous values are restored, also on error.
    """
    env = MlflowHook(conn_id).tracking_env() if _connection_defined(conn_id) else {}
    before = {k: os.environ.get(k) for k in TRACKING_ENV}
    try:
        if env:
            for k in TRACKING_ENV:
                os.environ.pop(k, None)  # no user of another server next to this server's address
            os.environ.update(env)
        yield env
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def uses_mlflow(execute: F) -> F:
    """Decorate an operator's ``execute``: it runs inside :func:`mlflow_credentials` of the operator's
    ``mlflow_conn_id`` (default ``airloop_mlflow``)."""

    @functools.wraps(execute)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with mlflow_credentials(getattr(self, "mlflow_conn_id", None) or DEFAULT_CONN_ID):
            return execute(self, *args, **kwargs)

    wrapper.uses_mlflow = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
