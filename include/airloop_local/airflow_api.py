"""A small client for the Airflow 3 REST API of the local stack (token auth of the simple auth manager)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class AirflowApi:
    """:param base_url: e.g. ``http://127.0.0.1:8080``; :param username/password: simple auth manager user"""

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.username, self.password, self.timeout = username, password, timeout
        self._token: str | None = None

    def _request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self.token()}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:1000]
            raise ApiError(e.code, f"{method} {path}: {detail}") from None

    def token(self) -> str:
        if self._token is None:
            out = self._request(
                "POST", "/auth/token", {"username": self.username, "password": self.password}, auth=False
            )
            self._token = out["access_token"]
        return self._token

    def get(self, path: str, **params: Any) -> Any:
        """A GET, retried on 5xx (on SQLite the API server answers 500 while another process holds the lock)."""
        q = f"?{urllib.parse.urlencode(params, doseq=True)}" if params else ""
        for attempt in range(4):
            try:
                return self._request("GET", f"{path}{q}")
            except ApiError as e:
                if e.status < 500 or attempt == 3:
                    raise
                time.sleep(1.0 + attempt)
        raise AssertionError("unreachable")

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, body)

    def patch(self, path: str, body: Any) -> Any:
        return self._request("PATCH", path, body)

    # -- conveniences ---------------------------------------------------------------------------
    def wait_for_dag(self, dag_id: str, timeout_s: float = 180.0) -> dict[str, Any]:
        """Wait until the DAG processor has parsed ``dag_id``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.get(f"/api/v2/dags/{dag_id}")
            except ApiError as e:
                if e.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(2.0)

    def unpause(self, dag_id: str) -> None:
        self.patch(f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(
        self, dag_id: str, conf: dict[str, Any], run_id: str | None = None, logical_date: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"conf": conf, "logical_date": logical_date}
        if run_id:
            body["dag_run_id"] = run_id
        return self.post(f"/api/v2/dags/{dag_id}/dagRuns", body)

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns", limit=1000, order_by="logical_date")["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances")[
            "task_instances"
        ]
