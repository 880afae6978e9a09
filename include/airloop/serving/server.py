"""The model server: MLflow's scoring protocol in front of ``@champion`` and ``@challenger``.

* ``POST /invocations`` (JSON ``dataframe_split`` / ``dataframe_records`` / ``instances`` / ``inputs``,
  or CSV), ``GET /ping``, ``/health``, ``/version``, ``/metrics`` (Prometheus text format).
* Traffic split by ``challenger_weight``: sticky per ``X-Request-Key`` header (a hash of the key), random
  otherwise. If the challenger fails on a request, the client gets the champion's answer and the failure
  is counted against the challenger.
* A scoring request gets a 2xx, a 4xx that says why (400, 413, 415, 429), or a 503 with ``Retry-After``
  when no variant could answer or the prediction log cannot be written; never another 5xx. Bad requests
  never count against a variant, never reach the prediction log or the canary's histograms: they move the
  ``client_errors`` counter only (``rate_limited`` for 429).
* What a request may be is decided in one place, :mod:`airloop.serving.inputs` (the model's schema and
  suite), within the limits of the model's ``deployment`` config: a token bucket per server, the body
  size (enforced while the body streams in, chunked bodies included), rows per request, JSON depth.
* A variant that raises, or answers non-finite predictions or the wrong number of them, has failed.
* Every prediction is appended to the durable prediction log before the response is sent; only the
  model's declared columns (its request columns and outcome key) are logged.
* ``PUT /admin/weight`` and ``POST /admin/reload`` need ``Authorization: Bearer <token>`` (401 without or
  with a wrong one); the token comes from ``AIRLOOP_MODEL_SERVER_TOKEN`` or ``--admin-token-file``, and a
  server started without one refuses every admin request (403).

Run: ``python -m airloop.serving.server --model <model> --port 8090`` (tracking URI from
``MLFLOW_TRACKING_URI``, admin token from ``AIRLOOP_MODEL_SERVER_TOKEN``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import math
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airloop.serving.inputs import Checked, InputSchema
from airloop.serving.prediction_log import PredictionLog
from airloop.serving.protocol import RequestError, parse_table

if TYPE_CHECKING:
    from airloop.config import DeploymentConfig

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PREDICTION_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: where the admin token comes from (the stack puts one per model in its server's environment only)
TOKEN_ENV = "AIRLOOP_MODEL_SERVER_TOKEN"
#: the longest ``X-Request-Key`` accepted (it is logged with every row of the request)
MAX_REQUEST_KEY = 256
#: the largest admin request body (``{"weight": 0.25}``)
MAX_ADMIN_BODY = 4096
#: seconds a client is asked to wait after a 503 (no variant answered, no champion yet, log unavailable)
RETRY_AFTER_S = 5


@dataclass
class Variant:
    name: str  # champion | challenger
    version: str
    model: Any  # anything with .predict(DataFrame) -> DataFrame with a "prediction" column


class HttpModel:
    """A variant served by another endpoint that speaks the MLflow scoring protocol (``mlflow models
    serve``, a KServe revision, another airloop server). A refused connection, a timeout or a 5xx there is
    a failure of this variant, handled like any other (the champion answers, the failure is counted, never
    retried)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        from airloop.serving.client import ModelServerClient

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client = ModelServerClient(self.url, timeout=timeout, retries=0)

    def predict(self, df: Any) -> list[float]:
        preds = self.client.invocations(df)["predictions"]
        return [float(p["prediction"]) if isinstance(p, dict) else float(p) for p in preds]


def prediction_bounds(model: Any, fallback: Any = None) -> tuple[float, ...]:
    """The bucket bounds of the prediction histogram for a champion ``model``: its ``prediction_edges``
    (the quantiles of its reference predictions, so PSI works at any output scale), looked up on the
    model and on the python model inside an MLflow pyfunc; else ``fallback``; else :data:`PREDICTION_BUCKETS`.
    Bounds are sorted, distinct and finite; none left means the next choice."""
    edges = getattr(model, "prediction_edges", None)
    if edges is None and hasattr(model, "unwrap_python_model"):
        try:
            edges = getattr(model.unwrap_python_model(), "prediction_edges", None)
        except Exception:  # not a python-function model (a flavour MLflow loaded natively)
            edges = None
    for candidate in (edges, fallback):
        bounds = tuple(sorted({float(b) for b in candidate or () if math.isfinite(float(b))}))
        if bounds:
            return bounds
    return PREDICTION_BUCKETS


@dataclass
class Metrics:
    """Per-variant counters and histograms, rendered in the Prometheus text format.

    Each histogram name has one set of bucket bounds for all variants (``buckets``); changing them
    (:meth:`set_buckets`) drops that name's histograms, as a restart would, because counts over other
    bounds cannot be continued.
    """

    counters: dict[tuple[str, str], float] = field(default_factory=dict)
    hist: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    buckets: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {"request_latency_seconds": LATENCY_BUCKETS, "prediction": PREDICTION_BUCKETS}
    )
    lock: threading.Lock = field(default_factory=threading.Lock)

    def inc(self, name: str, variant: str, by: float = 1.0) -> None:
        with self.lock:
            self.counters[(name, variant)] = self.counters.get((name, variant), 0.0) + by

    def set_buckets(self, name: str, bounds: tuple[float, ...]) -> bool:
        """Histogram ``name`` over ``bounds`` from now on; True (and its histograms reset) if they changed."""
        with self.lock:
            return self._set_buckets(name, tuple(bounds))

    def _set_buckets(self, name: str, bounds: tuple[float, ...]) -> bool:
        if self.buckets.get(name) == bounds:
            return False
        self.buckets[name] = bounds
        for key in [k for k in self.hist if k[0] == name]:
            del self.hist[key]
        return True

    def observe(self, name: str, variant: str, value: float, buckets: tuple[float, ...] | None = None) -> None:
        """Count ``value`` in histogram ``name`` of ``variant``, over ``buckets`` if given (see
        :meth:`set_buckets`), else over the bounds the name has."""
        with self.lock:
            if buckets is not None:
                self._set_buckets(name, tuple(buckets))
            bounds = self.buckets[name]
            h = self.hist.setdefault((name, variant), [0.0] * (len(bounds) + 2))
            for i, b in enumerate(bounds):
                if value <= b:
                    h[i] += 1
            h[-2] += value  # sum
            h[-1] += 1  # count

    def observe_many(self, name: str, variant: str, values: Any) -> None:
        """Count every value of ``values`` (a numpy array) in histogram ``name`` of ``variant``: one pass
        per request, not per row."""
        import numpy as np

        with self.lock:
            bounds = self.buckets[name]
            h = self.hist.setdefault((name, variant), [0.0] * (len(bounds) + 2))
            counts = (values[:, None] <= np.asarray(bounds)[None, :]).sum(axis=0)
            for i, c in enumerate(counts.tolist()):
                h[i] += c
            h[-2] += float(values.sum())
            h[-1] += len(values)

    def render(self) -> str:
        lines = []
        with self.lock:
            for (name, variant), v in sorted(self.counters.items()):
                lines.append(f'airloop_{name}_total{{variant="{variant}"}} {v}')
            for (name, variant), h in sorted(self.hist.items()):
                for b, c in zip(self.buckets[name], h, strict=False):
                    lines.append(f'airloop_{name}_bucket{{variant="{variant}",le="{b}"}} {c}')
                lines.append(f'airloop_{name}_bucket{{variant="{variant}",le="+Inf"}} {h[-1]}')
                lines.append(f'airloop_{name}_sum{{variant="{variant}"}} {h[-2]}')
                lines.append(f'airloop_{name}_count{{variant="{variant}"}} {h[-1]}')
        return "\n".join(lines) + "\n"


class TokenBucket:
    """At most ``rate`` requests per second sustained, ``burst`` at once: what keeps the open scoring route
    from being used to flood the server, its prediction log and the canary's figures.

    :param clock: seconds, monotonic (injectable for tests)
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = float(burst)
        self.stamp = clock()
        self.lock = threading.Lock()

    def take(self) -> float:
        """0.0 if a request may go now (its token taken), else the seconds until one may."""
        with self.lock:
            now = self.clock()
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate


def _event_time(value: str | None) -> str | None:
    """``X-Event-Time`` as a UTC ISO timestamp (naive values are taken as UTC); 400 if unreadable or if its
    offset moves it out of the calendar (year 1 to 9999)."""
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).isoformat()
    except (ValueError, OverflowError):
        raise RequestError(
            400, f"X-Event-Time {value[:40]!r} is not an ISO 8601 timestamp within years 1-9999 (UTC)"
        ) from None


def choose_variant(request_key: str | None, weight: float, rng: random.Random) -> str:
    """``challenger`` with probability ``weight``: by a hash of the key (sticky), or at random."""
    if weight <= 0:
        return "champion"
    if request_key:
        key = request_key.encode("utf-8", "surrogatepass")
        u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
    else:
        u = rng.random()
    return "challenger" if u < weight else "champion"


class _ServingFailed(Exception):
    """No variant answered a request (a 503 whose message says which failed)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class VariantFailed(Exception):
    """A variant answered with something that is not a prediction per row (non-finite, too few, not numbers)."""


def _prediction_log_rows(
    checked: Checked,
    preds: list[float],
    request_id: str,
    served: str,
    version: str,
    event: str | None,
    request_key: str | None,
) -> list[dict[str, Any]]:
    """The prediction-log rows of one request: one per input row, with the model's declared columns only."""
    now = dt.datetime.now(dt.UTC).isoformat()
    rows = checked.log_rows()
    return [
        {
            "request_id": request_id,
            "row": i,
            "timestamp": now,
            "event_time": event or now,
            "variant": served,
            "version": version,
            "inputs": rows[i],
            "output": p,
            "request_key": request_key,
        }
        for i, p in enumerate(preds)
    ]


class ModelService:
    """The serving logic, independent of the HTTP framework (and so testable without a socket)."""

    def __init__(
        self,
        model_name: str,
        champion: Variant | None,
        challenger: Variant | None,
        weight: float,
        log: PredictionLog | None,
        max_body: int | None = None,
        seed: int | None = None,
        request_columns: list[str] | None = None,
        prediction_edges: list[float] | None = None,
        *,
        schema: InputSchema | None = None,
        deployment: DeploymentConfig | None = None,
    ):
        """:param request_columns: the columns a request must carry, for a model without a pipeline config
            (only checked for finite numbers); default: the schema of the pipeline config named
            ``model_name``, with its suite's rules (see :mod:`airloop.serving.inputs`)
        :param prediction_edges: bucket bounds of the prediction histograms for a champion that has no
            ``prediction_edges`` of its own (default :data:`PREDICTION_BUCKETS`)
        :param schema: what a request's values may be (default: from the config, as above)
        :param deployment: the limits (rate, body, rows, magnitudes, suite checks); default: the pipeline
            config's ``deployment``, or the defaults for a model without one
        :param max_body: bytes per request (default ``deployment.max_request_bytes``)
        """
        from airloop.config import DeploymentConfig

        self.model_name = model_name
        if schema is None and request_columns is None:
            from airloop.config import get_pipeline

            cfg = get_pipeline(model_name)
            deployment = deployment or cfg.deployment
            schema = InputSchema.from_config(cfg.model_copy(update={"deployment": deployment}))
        deployment = deployment or DeploymentConfig()
        if schema is None:
            columns = tuple(request_columns or ())
            schema = InputSchema(required=columns, logged=columns, max_abs=deployment.max_abs_input)
        self.schema = schema
        self.request_columns = list(schema.required)
        self.max_body = max_body or deployment.max_request_bytes
        self.max_rows = deployment.max_rows_per_request
        rate = deployment.max_requests_per_second
        self.bucket = TokenBucket(rate, deployment.burst_requests) if rate else None
        self.prediction_edges = prediction_edges
        self.metrics = Metrics()
        self.variants: dict[str, Variant] = {}
        self.weight = 0.0
        if champion is not None:
            self.reload(champion, challenger)
            self.weight = weight if challenger else 0.0
        self.log = log
        self.rng = random.Random(seed)

    def set_weight(self, weight: float) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError("weight must be within [0, 1]")
        self.weight = weight if "challenger" in self.variants else 0.0

    def invoke(
        self, body: bytes, content_type: str, request_key: str | None = None, event_time: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One scoring request: (status, JSON response). 2xx, 4xx, or 503 (retry later); nothing else.

        Only a 200 moves the prediction log and the per-variant figures; a refused request moves
        ``client_errors`` alone.

        :param event_time: when the scored event happens (ISO 8601, from ``X-Event-Time``; default now):
            the prediction log is partitioned by its day, so drift checks read an interval's traffic even
            when it is replayed or arrives late
        """
        t0 = time.perf_counter()
        variants = self.variants  # one consistent pair for the whole request (a reload swaps the dict)
        if "champion" not in variants:
            return 503, {
                "error_code": "NO_MODEL",
                "message": f"{self.model_name} has no @champion yet; "
                "the server loads it on POST /admin/reload once the first model passes the gate",
            }
        try:
            checked, event = self._accept(body, content_type, request_key, event_time)
        except RequestError as e:
            self.metrics.inc("client_errors", "none")
            return e.status, {"error_code": "BAD_REQUEST", "message": e.message}
        chosen = choose_variant(request_key, self.weight, self.rng) if "challenger" in variants else "champion"
        try:
            served, preds = self._serve(variants, chosen, checked.frame)
        except RequestError as e:  # the model's own signature refused the values: the client's fault
            self.metrics.inc("client_errors", "none")
            return e.status, {"error_code": "BAD_REQUEST", "message": e.message}
        except _ServingFailed as e:
            return 503, {"error_code": "MODEL_FAILED", "message": e.message}
        elapsed = time.perf_counter() - t0  # the scoring, without the log's fsync (as before: like with like)
        v = variants[served]
        request_id = uuid.uuid4().hex
        if self.log is not None:
            rows = _prediction_log_rows(checked, preds.tolist(), request_id, served, v.version, event, request_key)
            try:
                self.log.append(rows)
            except (OSError, ValueError) as e:  # a full or read-only disk: not acknowledged, so not counted
                why = getattr(e, "strerror", None) or type(e).__name__
                return 503, {
                    "error_code": "LOG_UNAVAILABLE",
                    "message": f"the prediction log cannot be written ({why}); nothing was kept: send the "
                    "request again later",
                }
        self._observe(served, elapsed, preds)
        return 200, {"predictions": preds.tolist(), "variant": served, "version": v.version, "request_id": request_id}

    def _accept(
        self, body: bytes, content_type: str, request_key: str | None, event_time: str | None
    ) -> tuple[Checked, str | None]:
        """The request's checked values and event time, or a :class:`RequestError` that says what to fix."""
        if request_key is not None and len(request_key) > MAX_REQUEST_KEY:
            raise RequestError(400, f"X-Request-Key is {len(request_key)} characters; the limit is {MAX_REQUEST_KEY}")
        event = _event_time(event_time)
        table = parse_table(body, content_type, self.max_body, self.max_rows, self.schema.text_columns)
        return self.schema.check(table), event

    def _serve(self, variants: dict[str, Variant], chosen: str, df: Any) -> tuple[str, Any]:
        """(variant that answered, its predictions): ``chosen``, or the champion when the challenger fails.

        Counts each failure against its variant; raises :class:`_ServingFailed` when no variant answered."""
        why: dict[str, str] = {}
        for variant in dict.fromkeys([chosen, "champion"]):
            try:
                return variant, self._predict(variants[variant], df)
            except RequestError:
                raise
            except Exception as e:  # the variant failed: raised, or answered no usable prediction
                self.metrics.inc("server_errors", variant)
                why[variant] = str(e) if isinstance(e, VariantFailed) else f"it raised {type(e).__name__}"
        failed = "; ".join(f"the {k} failed ({v})" for k, v in why.items())
        raise _ServingFailed(f"no variant could answer this request: {failed}; retry later")

    def _predict(self, variant: Variant, df: Any) -> Any:
        """The variant's predictions for ``df`` as a float array; :class:`VariantFailed` unless there is one
        finite number per row, :class:`RequestError` if the model's signature refuses the request."""
        import numpy as np

        frame = df if list(df.columns) == self.request_columns else df[self.request_columns]
        try:
            out = variant.model.predict(frame)
        except Exception as e:
            if type(e).__name__ == "MlflowException" and "schema" in str(e).lower():
                raise RequestError(400, f"the request does not match the model's signature: {str(e)[:300]}") from None
            raise
        try:
            preds = np.asarray(out["prediction"] if hasattr(out, "columns") else out, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise VariantFailed("its answer is not a number per row") from None
        if len(preds) != len(df):
            raise VariantFailed(f"it answered {len(preds)} predictions for {len(df)} rows")
        if not np.isfinite(preds).all():
            raise VariantFailed("it answered a non-finite prediction")
        return preds

    def _observe(self, served: str, elapsed: float, preds: Any) -> None:
        """Count a served request, its latency and its predictions against ``served``."""
        self.metrics.inc("requests", served)
        self.metrics.observe("request_latency_seconds", served, elapsed, LATENCY_BUCKETS)
        # both variants over the champion's bounds (see reload), so PSI compares like with like
        self.metrics.observe_many("prediction", served, preds)

    def reload(self, champion: Variant, challenger: Variant | None) -> None:
        """Swap in the current aliases (after a promotion or rollback) without a restart. A challenger
        that is new (another version) starts with no traffic: only its canary gives it a share.

        The prediction histograms of both variants use the champion's bounds (:func:`prediction_bounds`);
        a champion with other bounds resets them (the canary reads that as a reset of those counters)."""
        before = self.variants.get("challenger")
        self.metrics.set_buckets("prediction", prediction_bounds(champion.model, self.prediction_edges))
        self.variants = {"champion": champion, **({"challenger": challenger} if challenger else {})}
        if not challenger or before is None or before.version != challenger.version:
            self.weight = 0.0

    def version_info(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "challenger_weight": self.weight,
            "variants": {k: v.version for k, v in self.variants.items()},
        }


def load_variants(model: str, tracking_uri: str | None = None) -> tuple[Variant, Variant | None]:
    """``@champion`` (required) and ``@challenger`` (if set) from the MLflow registry."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    out: dict[str, Variant] = {}
    for alias in ("champion", "challenger"):
        try:
            mv = client.get_model_version_by_alias(model, alias)
        except MlflowException:
            continue
        out[alias] = Variant(alias, str(mv.version), mlflow.pyfunc.load_model(f"models:/{model}/{mv.version}"))
    if "champion" not in out:
        raise RuntimeError(f"model {model!r} has no @champion alias yet: nothing to serve")
    return out["champion"], out.get("challenger")


async def read_body(request: Any, limit: int) -> bytes:
    """The request's body, read no further than ``limit`` bytes plus the chunk that crossed it: a declared
    ``Content-Length`` over the limit is refused before reading, a chunked body as soon as it passes it.

    :raises RequestError: 413 over the limit, 400 for an unreadable ``Content-Length``
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.strip().isascii() and declared.strip().isdigit()):
            raise RequestError(400, f"Content-Length {declared[:20]!r} is not a number of bytes")
        if int(declared) > limit:
            raise RequestError(413, f"request body is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over {limit} bytes (the limit); send smaller requests")
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(status: int, payload: dict[str, Any], retry_after: float | None = None) -> Any:
    """A JSON response; a 429 or 503 tells the client when to come back (``Retry-After``, whole seconds)."""
    from starlette.responses import JSONResponse

    headers = {}
    if status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after if retry_after is not None else RETRY_AFTER_S)))
    return JSONResponse(payload, status, headers=headers)


def _scoring_routes(service: ModelService) -> list[Any]:
    """``POST /invocations`` and the read-only routes (``/ping``, ``/health``, ``/version``, ``/metrics``)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def invocations(request: Request) -> Any:
        bucket = service.bucket
        wait = bucket.take() if bucket is not None else 0.0
        if bucket is not None and wait:
            service.metrics.inc("rate_limited", "none")
            message = f"over this server's scoring rate ({bucket.rate:g} requests/s); retry after the wait"
            return _answer(429, {"error_code": "RATE_LIMITED", "message": message}, wait)
        try:
            body = await read_body(request, service.max_body)
        except RequestError as e:
            service.metrics.inc("client_errors", "none")
            return _answer(e.status, {"error_code": "BAD_REQUEST", "message": e.message})
        status, payload = await run_in_threadpool(
            service.invoke,
            body,
            request.headers.get("content-type", ""),
            request.headers.get("x-request-key"),
            request.headers.get("x-event-time"),
        )
        return _answer(status, payload)

    async def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse("\n")

    async def version(request: Request) -> JSONResponse:
        return JSONResponse(service.version_info())

    async def metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    return [
        Route("/invocations", invocations, methods=["POST"]),
        Route("/ping", ping),
        Route("/health", ping),
        Route("/version", version),
        Route("/metrics", metrics),
    ]


def _authorized(request: Any, token: str | None) -> Any:
    """None if the request carries the admin token, else the 401 (or, without a token, 403) to answer."""
    from starlette.responses import JSONResponse

    if not token:
        message = f"admin API disabled: no token configured (set {TOKEN_ENV} or --admin-token-file)"
        return JSONResponse({"error_code": "FORBIDDEN", "message": message}, 403)
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode()):
        return None
    return JSONResponse(
        {"error_code": "UNAUTHORIZED", "message": "send the admin token: Authorization: Bearer <token>"},
        401,
        headers={"WWW-Authenticate": 'Bearer realm="airloop model server admin"'},
    )


def _admin_routes(service: ModelService, loader: Any, token: str | None) -> list[Any]:
    """``PUT /admin/weight`` and ``POST /admin/reload``, which the deploy DAG drives with the bearer token."""
    import json

    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def set_weight(request: Request) -> Any:
        if (refused := _authorized(request, token)) is not None:
            return refused
        try:
            doc = json.loads(await read_body(request, MAX_ADMIN_BODY))
            weight = float(doc["weight"])
            service.set_weight(weight)
        except RequestError as e:
            return _answer(e.status, {"error_code": "BAD_REQUEST", "message": e.message})
        except (KeyError, TypeError, ValueError, RecursionError, OverflowError) as e:
            message = f'send {{"weight": <0..1>}}: {type(e).__name__}: {str(e)[:200]}'
            return JSONResponse({"error_code": "BAD_REQUEST", "message": message}, 400)
        return JSONResponse(service.version_info())

    async def reload(request: Request) -> Any:
        if (refused := _authorized(request, token)) is not None:
            return refused
        if loader is None:
            return JSONResponse({"error_code": "NOT_CONFIGURED", "message": "this server has no model loader"}, 409)
        try:
            champion, challenger = await run_in_threadpool(loader)
        except Exception as e:  # the registry is unreachable or has no champion: try again later
            message = f"could not load the registry's aliases ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            return _answer(503, {"error_code": "RELOAD_FAILED", "message": message})
        service.reload(champion, challenger)
        return JSONResponse(service.version_info())

    return [
        Route("/admin/weight", set_weight, methods=["PUT"]),
        Route("/admin/reload", reload, methods=["POST"]),
    ]


def create_app(service: ModelService, loader: Any = None, admin_token: str | None = None) -> Any:
    """The ASGI app (Starlette) around a :class:`ModelService`.

    :param loader: ``() -> (champion, challenger)`` used by ``POST /admin/reload``
    :param admin_token: the bearer token of the admin routes; None: they answer 403 (see :func:`admin_token`)
    """
    from starlette.applications import Starlette

    # Scoring is open (rate-bounded); the admin routes need the token. Bind to loopback or a private network.
    return Starlette(routes=[*_admin_routes(service, loader, admin_token), *_scoring_routes(service)])


def admin_token(token_file: str | None) -> str | None:
    """The admin token: the first line of ``token_file`` if given, else ``$AIRLOOP_MODEL_SERVER_TOKEN``;
    None (admin API disabled) if neither holds one."""
    if token_file:
        with open(token_file, encoding="utf-8") as fh:
            token = fh.readline().strip()
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from airloop.storage import default_data_root_uri

    ap = argparse.ArgumentParser(description="Serve @champion and @challenger with MLflow's scoring protocol")
    ap.add_argument("--model", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--challenger-weight", type=float, default=0.0)
    ap.add_argument("--data-root", default=default_data_root_uri())
    ap.add_argument("--allow-empty", action="store_true", help="start without a champion (answer 503 until reloaded)")
    ap.add_argument("--challenger-url", help="serve @challenger from this scoring endpoint instead of in process")
    ap.add_argument(
        "--admin-token-file", help=f"the admin routes' bearer token, first line of this file (default: ${TOKEN_ENV})"
    )
    args = ap.parse_args(argv)
    token = admin_token(args.admin_token_file)

    def loader() -> tuple[Variant, Variant | None]:
        champion, challenger = load_variants(args.model, os.environ.get("MLFLOW_TRACKING_URI"))
        if challenger is not None and args.challenger_url:
            challenger = Variant("challenger", challenger.version, HttpModel(args.challenger_url))
        return champion, challenger

    try:
        champion, challenger = loader()
    except Exception:  # no champion yet, or the registry is not up yet
        if not args.allow_empty:
            raise
        champion, challenger = None, None
    service = ModelService(
        args.model, champion, challenger, args.challenger_weight, PredictionLog(args.data_root, args.model)
    )
    uvicorn.run(create_app(service, loader, token), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
