"""The base of airloop's HTTP hooks: an Airflow connection turned into an :class:`airloop.http.HttpClient`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airloop.http import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, HttpClient

if TYPE_CHECKING:
    from airflow.sdk import Connection


def connection_url(conn: Connection, default_scheme: str = "http", default_port: int | None = None) -> str:
    """The base URL a connection names: its ``host`` when that is a full URL, else
    ``<schema>://<host>[:<port>]`` followed by the ``endpoint`` of its extra (a path, e.g. ``/hooks/oncall``).

    :param default_scheme: when the connection's ``schema`` is empty
    :param default_port: when the connection has no ``port`` (None: none in the URL)
    """
    host = conn.host or ""
    if "://" in host:
        return host
    port = conn.port or default_port
    endpoint = (conn.extra_dejson or {}).get("endpoint", "")
    return f"{conn.schema or default_scheme}://{host}{f':{port}' if port else ''}{endpoint}"


class HttpServiceHook(BaseHook):
    """An HTTP service behind an Airflow connection; :meth:`http_client` is an ``HttpClient`` on its URL.

    Subclasses name their connection attribute and defaults; a connection's password, where set, is sent as
    a bearer token.

    :param conn_id: the Airflow connection (default :attr:`default_conn_name`)
    :param timeout: seconds for one attempt (default :attr:`default_timeout`)
    :param retries: attempts after the first, for a refused connection, a timeout or a 502/503/504
    """

    conn_name_attr = "http_conn_id"
    default_conn_name = "http_default"
    conn_type = "http"
    hook_name = "HTTP service"
    default_scheme = "http"
    default_port: int | None = None
    default_timeout = DEFAULT_TIMEOUT_S

    def __init__(
        self, conn_id: str | None = None, *, timeout: float | None = None, retries: int = DEFAULT_RETRIES
    ) -> None:
        super().__init__()
        self.conn_id = conn_id or self.default_conn_name
        self.timeout = self.default_timeout if timeout is None else timeout
        self.retries = retries
        self._client: HttpClient | None = None

    def base_url(self) -> str:
        """The service's URL, from the connection."""
        return connection_url(self.get_connection(self.conn_id), self.default_scheme, self.default_port)

    def http_client(self) -> HttpClient:
        """A client on the connection's URL with this hook's timeout and retries (the connection is read once)."""
        if self._client is None:
            conn = self.get_connection(self.conn_id)
            headers = {"Authorization": f"Bearer {conn.password}"} if conn.password else {}
            url = connection_url(conn, self.default_scheme, self.default_port)
            self._client = HttpClient(url, timeout=self.timeout, retries=self.retries, headers=headers)
        return self._client

    def get_conn(self) -> Any:
        return self.http_client()
