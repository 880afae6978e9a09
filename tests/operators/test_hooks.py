"""The HTTP hooks and the model server's client against a real HTTP server on loopback (``http.server`` in a
thread) that answers from a script and records every request: URLs from Airflow connections, the routes
and bodies sent, a retry of a 503, no retry of a 400, and the error a caller sees."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from airloop.http import HttpError
from airloop.serving.client import ModelServerClient
from airloop_airflow.hooks.alert_webhook import AlertWebhookHook
from airloop_airflow.hooks.model_server import ModelServerHook
from airloop_airflow.hooks.prometheus import PrometheusHook
from tests.conftest import free_port

pytestmark = pytest.mark.unit


class Stub:
    """What the server answers (``script[(method, path)]``: a list of (status, body), the last one repeats)
    and what it was sent (``requests``: method, path with query, headers, body)."""

    def __init__(self) -> None:
        self.script: dict[tuple[str, str], list[tuple[int, Any]]] = {}
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, method: str, path: str, *answers: tuple[int, Any]) -> None:
        self.script[(method, path)] = list(answers)

    def paths(self) -> list[str]:
        return [f"{m} {p}" for m, p, _, _ in self.requests]


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            stub.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            answers = stub.script.get((self.command, self.path.split("?")[0])) or [(404, {"error": "no route"})]
            status, payload = answers.pop(0) if len(answers) > 1 else answers[0]
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _any

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextlib.contextmanager
def serve_stub() -> Iterator[Stub]:
    """A :class:`Stub` server on a free loopback port, for the duration of the block."""
    s = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(s))
    s.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield s
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    with serve_stub() as s:
        yield s


def connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "http", **fields}))


# --- the model server ------------------------------------------------------------------------------------


def test_the_model_server_hook_drives_the_servers_routes(stub, monkeypatch):
    connection(monkeypatch, "srv_a", host="127.0.0.1", port=stub.port)
    served = {"model": "m", "challenger_weight": 0.0, "variants": {"champion": "1", "challenger": "2"}}
    stub.answer("POST", "/admin/reload", (200, served))
    stub.answer("PUT", "/admin/weight", (200, {**served, "challenger_weight": 0.25}))
    stub.answer("GET", "/metrics", (200, 'airloop_requests_total{variant="champion"} 3.0\n'))
    stub.answer("GET", "/health", (200, "\n"))
    stub.answer("GET", "/version", (200, served))
    stub.answer("POST", "/invocations", (200, {"predictions": [0.5], "variant": "champion"}))

    client = ModelServerHook("srv_a").get_conn()
    assert isinstance(client, ModelServerClient) and client.base_url == stub.url
    assert client.reload() == served
    assert client.set_weight(0.25)["challenger_weight"] == 0.25
    assert client.metrics_text().startswith("airloop_requests_total")
    assert client.health() is True and client.version() == served
    answer = client.invocations({"instances": [[1.0]]}, request_key="k-1", event_time="2013-01-02T10:00:00")
    assert answer["predictions"] == [0.5]

    assert stub.paths() == [
        "POST /admin/reload",
        "PUT /admin/weight",
        "GET /metrics",
        "GET /health",
        "GET /version",
        "POST /invocations",
    ]
    weight, invocation = stub.requests[1], stub.requests[-1]
    assert json.loads(weight[3]) == {"weight": 0.25}
    assert json.loads(invocation[3]) == {"instances": [[1.0]]}
    headers = invocation[2]
    assert headers["x-request-key"] == "k-1" and headers["x-event-time"] == "2013-01-02T10:00:00"
    assert headers["content-type"] == "application/json"


def test_the_connections_password_is_the_admin_token_of_the_admin_routes_only(stub, monkeypatch):
    """The deploy DAG's calls that move traffic or aliases carry the token; scoring and reading do not."""
    from airloop_airflow.targets.local import LocalServerTarget

    connection(monkeypatch, "airloop_model_server_m", host="127.0.0.1", port=stub.port, password="s3cr3t-token")
    served = {"model": "m", "challenger_weight": 0.1, "variants": {"champion": "1", "challenger": "2"}}
    stub.answer("POST", "/admin/reload", (200, served))
    stub.answer("PUT", "/admin/weight", (200, served))
    stub.answer("GET", "/metrics", (200, ""))
    stub.answer("POST", "/invocations", (200, {"predictions": [0.5]}))
    target = LocalServerTarget(ModelServerHook("airloop_model_server_m").get_conn())
    target.prepare("2")
    target.set_percent(10)
    target.readings()
    target.client.invocations({"instances": [{"a": 1}]})
    auth = {f"{m} {p}": h.get("authorization") for m, p, h, _ in stub.requests}
    assert auth == {
        "POST /admin/reload": "Bearer s3cr3t-token",
        "PUT /admin/weight": "Bearer s3cr3t-token",
        "GET /metrics": None,
        "POST /invocations": None,
    }
    assert "s3cr3t" not in repr(target.client)


def test_a_dataframe_is_sent_in_dataframe_split_form(stub):
    import pandas as pd

    stub.answer("POST", "/invocations", (200, {"predictions": [0.1, 0.2]}))
    ModelServerClient(stub.url).invocations(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
    assert json.loads(stub.requests[0][3]) == {"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}}


def test_a_503_is_retried_and_a_400_is_not(stub):
    stub.answer("POST", "/admin/reload", (503, "the registry is unreachable"), (200, {"variants": {}}))
    stub.answer("PUT", "/admin/weight", (400, {"error_code": "BAD_REQUEST", "message": "weight must be within [0, 1]"}))
    client = ModelServerClient(stub.url, retries=2)
    assert client.reload() == {"variants": {}}
    with pytest.raises(HttpError) as info:
        client.set_weight(2.0)
    assert info.value.status == 400 and "weight must be within" in info.value.body
    assert stub.paths() == ["POST /admin/reload", "POST /admin/reload", "PUT /admin/weight"]


def test_retries_stop_at_the_configured_number(stub):
    stub.answer("GET", "/metrics", (503, "starting"))
    with pytest.raises(HttpError) as info:
        ModelServerClient(stub.url, retries=1).metrics_text()
    assert info.value.status == 503 and info.value.url == f"{stub.url}/metrics"
    assert stub.paths() == ["GET /metrics"] * 2


def test_health_is_false_when_nothing_answers():
    assert ModelServerClient(f"http://127.0.0.1:{free_port()}", retries=5).health() is False


def test_a_remote_variant_is_tried_once(stub):
    """The server's ``HttpModel``: a failing variant is counted by the server, not retried."""
    import pandas as pd

    from airloop.serving.server import HttpModel

    stub.answer("POST", "/invocations", (503, "overloaded"), (200, {"predictions": [{"prediction": 0.7}]}))
    model = HttpModel(stub.url, timeout=2.0)
    frame = pd.DataFrame({"a": [1]})
    with pytest.raises(HttpError):
        model.predict(frame)
    assert model.predict(frame) == [0.7]
    assert stub.paths() == ["POST /invocations"] * 2


def test_replay_counts_each_answer_once(stub):
    from airloop.serving import replay

    stub.answer(
        "POST", "/invocations", (200, {"variant": "champion"}), (503, {"error_code": "NO_MODEL"}), (400, "not json")
    )
    client = ModelServerClient(stub.url, retries=0)
    assert replay.send(client, b"{}", "k", "2013-01-01T00:00:00") == (200, {"variant": "champion"})
    assert replay.send(client, b"{}", None) == (503, {"error_code": "NO_MODEL"})
    assert replay.send(client, b"{}", None) == (400, None)
    assert replay.send(ModelServerClient(f"http://127.0.0.1:{free_port()}", retries=0), b"{}", None) == (0, None)
    assert len(stub.requests) == 3


# --- Prometheus ------------------------------------------------------------------------------------------


def test_prometheus_query_returns_the_result(stub, monkeypatch):
    connection(monkeypatch, "prom_a", host="127.0.0.1", port=stub.port)
    result = [{"metric": {"le": "+Inf"}, "value": [0, "12"]}]
    stub.answer(
        "GET", "/api/v1/query", (200, {"status": "success", "data": {"resultType": "vector", "result": result}})
    )
    assert PrometheusHook("prom_a").query('sum by (le) (x{a="b"})') == result
    [(method, path, _, _)] = stub.requests
    assert method == "GET" and path == "/api/v1/query?query=sum+by+%28le%29+%28x%7Ba%3D%22b%22%7D%29"


def test_a_failed_prometheus_query_says_why(stub, monkeypatch):
    connection(monkeypatch, "prom_b", host="127.0.0.1", port=stub.port)
    stub.answer("GET", "/api/v1/query", (400, {"status": "error", "errorType": "bad_data", "error": "parse error"}))
    with pytest.raises(RuntimeError, match="Prometheus query failed: .*parse error"):
        PrometheusHook("prom_b").query("sum(")
    assert len(stub.requests) == 1  # a bad query is not retried


def test_prometheus_defaults_to_its_port():
    from airflow.sdk import Connection

    from airloop_airflow.hooks.http_service import connection_url

    conn = Connection(conn_id="p", conn_type="http", host="prometheus.monitoring")
    assert connection_url(conn, PrometheusHook.default_scheme, PrometheusHook.default_port) == (
        "http://prometheus.monitoring:9090"
    )


# --- the alert webhook -----------------------------------------------------------------------------------


def test_the_alert_hook_posts_json_with_a_bearer_token(stub, monkeypatch):
    connection(monkeypatch, "alerts_a", host=f"{stub.url}/hooks/oncall", password="tok")
    stub.answer("POST", "/hooks/oncall", (200, "ok"))
    AlertWebhookHook("alerts_a").send({"model": "m", "at": dt.date(2013, 1, 2)})
    [(method, path, headers, body)] = stub.requests
    assert (method, path) == ("POST", "/hooks/oncall")
    assert headers["authorization"] == "Bearer tok" and headers["content-type"] == "application/json"
    assert json.loads(body) == {"model": "m", "at": "2013-01-02"}


def test_the_alert_hook_builds_its_url_from_host_port_schema_and_endpoint(stub, monkeypatch):
    connection(
        monkeypatch, "alerts_b", host="127.0.0.1", port=stub.port, schema="http", extra={"endpoint": "/v1/alerts"}
    )
    stub.answer("POST", "/v1/alerts", (502, "bad gateway"), (200, "ok"))
    hook = AlertWebhookHook("alerts_b")
    assert hook.base_url() == f"{stub.url}/v1/alerts" and hook.timeout == 10.0
    hook.send({"model": "m"})
    assert stub.paths() == ["POST /v1/alerts"] * 2  # a 502 is retried
    assert "authorization" not in stub.requests[0][2]


def test_an_alert_webhook_that_refuses_fails_with_the_url(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/x"
    connection(monkeypatch, "alerts_c", host=url)
    with pytest.raises(HttpError) as info:
        AlertWebhookHook("alerts_c", retries=0).send({"model": "m"})
    assert info.value.status == 0 and info.value.url == url
