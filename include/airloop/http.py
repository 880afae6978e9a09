"""One small HTTP client for every JSON/text service airloop talks to (model servers, Airflow's REST API,
webhooks, alert channels, Prometheus).

A client owns its base URL, headers, timeout and retry policy. Retries (tenacity, exponential backoff) cover
only what a retry can fix: a refused or reset connection, a timeout, and the statuses in ``retry_statuses``
(by default 502, 503 and 504). Any other status comes back to the caller as an :class:`HttpError` with the
service's own answer, at once.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

DEFAULT_RETRY_STATUSES = frozenset({502, 503, 504})
#: seconds for one attempt, and attempts after the first, unless a client or hook says otherwise
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 2


class HttpError(RuntimeError):
    """A non-2xx answer (``status`` > 0) or no answer at all (``status`` 0)."""

    def __init__(self, status: int, method: str, url: str, body: str) -> None:
        self.status, self.method, self.url, self.body = status, method, url, body
        what = f"HTTP {status}" if status else "no answer"
        super().__init__(f"{method} {url}: {what}: {body[:500]}")


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class HttpClient:
    """Requests against ``base_url``; ``retries`` extra attempts for transient failures.

    :param base_url: scheme, host, port and optional path prefix, e.g. ``http://127.0.0.1:8084``
    :param timeout: seconds for one attempt
    :param retries: attempts after the first, for connection errors and ``retry_statuses``
    :param backoff: the first wait between attempts in seconds; it doubles, up to 10 s
    :param headers: sent with every request (a token, a user agent)
    """

    base_url: str
    timeout: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    backoff: float = 0.5
    headers: dict[str, str] = field(default_factory=dict)
    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES

    def url(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        url = self.base_url.rstrip("/") + "/" + path.lstrip("/") if path else self.base_url
        return f"{url}?{urllib.parse.urlencode(params)}" if params else url

    def request(
        self,
        method: str,
        path: str = "",
        *,
        json_body: Any = None,
        data: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (),
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Response:
        """Send one request (retrying transient failures); raise :class:`HttpError` on any other non-2xx
        status, except those listed in ``ok``, which come back as a :class:`Response`."""
        url = self.url(path, params)
        hdrs = {**self.headers, **(headers or {})}
        if json_body is not None:
            data = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        attempts = 1 + (self.retries if retries is None else retries)
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=self.backoff, max=10),
            retry=retry_if_exception(self._transient),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return self._once(method, url, data, hdrs, ok, self.timeout if timeout is None else timeout)
        raise AssertionError("unreachable")  # pragma: no cover (tenacity re-raises the last error)

    def _once(
        self, method: str, url: str, data: bytes | None, headers: dict[str, str], ok: tuple[int, ...], timeout: float
    ) -> Response:
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (a configured endpoint)
                return Response(r.status, r.read(), dict(r.headers))
        except urllib.error.HTTPError as e:
            body = e.read()
            if e.code in ok:
                return Response(e.code, body, dict(e.headers or {}))
            raise HttpError(e.code, method, url, body.decode("utf-8", "replace")) from e
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise HttpError(0, method, url, f"{type(reason).__name__}: {reason}") from e

    def _transient(self, exc: BaseException) -> bool:
        return isinstance(exc, HttpError) and (exc.status == 0 or exc.status in self.retry_statuses)

    def get(self, path: str = "", **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str = "", **kw: Any) -> Response:
        return self.request("POST", path, **kw)

    def put(self, path: str = "", **kw: Any) -> Response:
        return self.request("PUT", path, **kw)

    def patch(self, path: str = "", **kw: Any) -> Response:
        return self.request("PATCH", path, **kw)
