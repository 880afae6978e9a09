"""The client of the local stack's Airflow 3 REST API (token auth of the simple auth manager), on
:class:`airloop.http.HttpClient`: it owns the connection, the timeouts and the retries."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from airloop.http import DEFAULT_RETRY_STATUSES, HttpClient, HttpError

#: on SQLite the API server answers 500 ("database is locked") while another process writes: retried too
RETRY_STATUSES = DEFAULT_RETRY_STATUSES | {500}
#: a run of an interval is started with more patience: the scheduler writes most while runs are created
INTERVAL_RETRIES = 5


class ApiError(HttpError):
    """An answer of the Airflow REST API that is not a success (``status`` 0: no answer at all)."""


class AirflowApi:
    """Calls to one Airflow API server; idempotent calls are retried on transient failures.

    :param base_url: e.g. ``http://127.0.0.1:8080``
    :param username: a simple auth manager user
    :param password: its password
    :param timeout: seconds for one attempt
    :param retries: attempts after the first, for a refused connection or a 500/502/503/504 answer
    :param backoff: the first wait between attempts in seconds; it doubles, up to 10 s
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 1.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.username, self.password = username, password
        self.http = HttpClient(
            self.base_url, timeout=timeout, retries=retries, backoff=backoff, retry_statuses=RETRY_STATUSES
        )
        self._token: str | None = None

    def _request(self, method: str, path: str, body: Any = None, *, retries: int | None, **kw: Any) -> Any:
        """One call with the bearer token (``retries``: None for the client's own count); raise
        :class:`ApiError` on a non-2xx answer."""
        headers = {"Authorization": f"Bearer {self.token()}"}
        try:
            response = self.http.request(method, path, json_body=body, headers=headers, retries=retries, **kw)
        except HttpError as e:
            raise ApiError(e.status, e.method, e.url, e.body) from None
        return response.json()

    def token(self) -> str:
        """The access token of the configured user (fetched once)."""
        if self._token is None:
            body = {"username": self.username, "password": self.password}
            try:
                self._token = str(self.http.post("/auth/token", json_body=body).json()["access_token"])
            except HttpError as e:
                raise ApiError(e.status, e.method, e.url, e.body) from None
        return self._token

    def get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=params or None, retries=None)

    def post(self, path: str, body: Any, *, idempotent: bool = False) -> Any:
        """A POST; retried only when ``idempotent`` (a repeat cannot make a second object)."""
        return self._request("POST", path, body, retries=None if idempotent else 0)

    def patch(self, path: str, body: Any) -> Any:
        return self._request("PATCH", path, body, retries=None)

    # -- conveniences ---------------------------------------------------------------------------
    def wait_for_dag(self, dag_id: str, timeout_s: float = 180.0) -> dict[str, Any]:
        """Wait until the DAG processor has parsed ``dag_id`` (the API answers 404 until then)."""
        waiting = Retrying(
            stop=stop_after_delay(timeout_s),
            wait=wait_fixed(2.0),
            retry=retry_if_exception(lambda e: isinstance(e, ApiError) and e.status == 404),
            reraise=True,
        )
        for attempt in waiting:
            with attempt:
                dag: dict[str, Any] = self.get(f"/api/v2/dags/{dag_id}")
                return dag
        raise AssertionError("unreachable")  # pragma: no cover (tenacity re-raises the last error)

    def unpause(self, dag_id: str) -> None:
        self.patch(f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(
        self, dag_id: str, conf: dict[str, Any], run_id: str | None = None, logical_date: str | None = None
    ) -> dict[str, Any]:
        """Start a run now (retried only with an explicit ``run_id``, which makes a repeat harmless)."""
        body: dict[str, Any] = {"conf": conf, "logical_date": logical_date}
        if run_id:
            body["dag_run_id"] = run_id
        run: dict[str, Any] = self.post(f"/api/v2/dags/{dag_id}/dagRuns", body, idempotent=bool(run_id))
        return run

    def trigger_interval(
        self,
        dag_id: str,
        day: dt.date,
        days: int = 1,
        conf: dict[str, Any] | None = None,
        note: str = "replayed interval",
    ) -> str:
        """Start the run of the data interval of ``days`` days from ``day``; return its run id.

        Idempotent: the run id is fixed by the interval, so an existing run (409) is reused and a retried
        request is safe. Backfills would do the same, but Airflow refuses them on SQLite while the
        scheduler runs; a run with an explicit data interval works on every metadata database.
        """
        run_id = f"replay__{day.isoformat()}"
        start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        body = {
            "dag_run_id": run_id,
            "logical_date": start.isoformat(),
            "data_interval_start": start.isoformat(),
            "data_interval_end": (start + dt.timedelta(days=days)).isoformat(),
            "conf": conf or {},
            "note": note,
        }
        self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body, retries=INTERVAL_RETRIES, ok=(409,))
        return run_id

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = self.get(f"/api/v2/dags/{dag_id}/dagRuns", limit=1000, order_by="logical_date")[
            "dag_runs"
        ]
        return runs

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        tis: list[dict[str, Any]] = self.get(path)["task_instances"]
        return tis
