"""The model server: MLflow's scoring protocol in front of ``@champion`` and ``@challenger``.

* ``POST /invocations`` (JSON ``dataframe_split`` / ``dataframe_records`` / ``instances`` / ``inputs``,
  or CSV), ``GET /ping``, ``/health``, ``/version``, ``/metrics`` (Prometheus text format).
* Traffic split by ``challenger_weight``: sticky per ``X-Request-Key`` header (a hash of the key), random
  otherwise. If the challenger fails on a request, the client gets the champion's answer and the failure
  is counted against the challenger.
* Bad requests get a 4xx that says why (415, 400, 413) and never count against a variant.
* Every prediction is appended to the durable prediction log before the response is sent.

Run: ``python -m airloop.serving.server --model <model> --port 8090`` (tracking URI from
``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import math
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from airloop.serving.prediction_log import PredictionLog
from airloop.serving.protocol import RequestError, parse_request

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PREDICTION_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


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


def _event_time(value: str | None) -> str | None:
    """``X-Event-Time`` as a UTC ISO timestamp (naive values are taken as UTC); 400 if unreadable."""
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RequestError(400, f"X-Event-Time {value[:40]!r} is not an ISO 8601 timestamp") from None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).isoformat()


def choose_variant(request_key: str | None, weight: float, rng: random.Random) -> str:
    """``challenger`` with probability ``weight``: by a hash of the key (sticky), or at random."""
    if weight <= 0:
        return "champion"
    if request_key:
        u = int.from_bytes(hashlib.sha256(request_key.encode()).digest()[:8], "big") / 2**64
    else:
        u = rng.random()
    return "challenger" if u < weight else "champion"


class _ServingFailed(Exception):
    """No variant answered a request (a 500 whose message says which failed)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _prediction_log_rows(
    df: Any,
    preds: list[float],
    request_id: str,
    served: str,
    version: str,
    event: str | None,
    request_key: str | None,
) -> list[dict[str, Any]]:
    """The prediction-log rows of one request: one per input row."""
    now = dt.datetime.now(dt.UTC).isoformat()
    rows = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    return [
        {
            "request_id": request_id,
            "row": i,
            "timestamp": now,
            "event_time": event or now,
            "variant": served,
            "version": version,
            "inputs": rows[i],
            "output": float(preds[i]),
            "request_key": request_key,
        }
        for i in range(len(preds))
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
        max_body: int = 4 * 1024 * 1024,
        seed: int | None = None,
        request_columns: list[str] | None = None,
        prediction_edges: list[float] | None = None,
    ):
        """:param request_columns: the columns a request must carry (the model config's
        ``request_columns``; default: those of the pipeline config named ``model_name``)
        :param prediction_edges: bucket bounds of the prediction histograms for a champion that has no
            ``prediction_edges`` of its own (default :data:`PREDICTION_BUCKETS`)
        """
        self.model_name = model_name
        if request_columns is None:
            from airloop.config import get_pipeline

            request_columns = get_pipeline(model_name).request_columns
        self.request_columns = list(request_columns)
        self.prediction_edges = prediction_edges
        self.metrics = Metrics()
        self.variants: dict[str, Variant] = {}
        self.weight = 0.0
        if champion is not None:
            self.reload(champion, challenger)
            self.weight = weight if challenger else 0.0
        self.log = log
        self.max_body = max_body
        self.rng = random.Random(seed)

    def set_weight(self, weight: float) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError("weight must be within [0, 1]")
        self.weight = weight if "challenger" in self.variants else 0.0

    def invoke(
        self, body: bytes, content_type: str, request_key: str | None = None, event_time: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One scoring request: (status, JSON response).

        :param event_time: when the scored event happens (ISO 8601, from ``X-Event-Time``; default now):
            the prediction log is partitioned by its day, so drift checks read an interval's traffic even
            when it is replayed or arrives late
        """
        t0 = time.perf_counter()
        if "champion" not in self.variants:
            return 503, {
                "error_code": "NO_MODEL",
                "message": f"{self.model_name} has no @champion yet; "
                "the server loads it on POST /admin/reload once the first model passes the gate",
            }
        try:
            df = parse_request(body, content_type, self.max_body)
            event = _event_time(event_time)
        except RequestError as e:
            self.metrics.inc("client_errors", "none")
            return e.status, {"error_code": "BAD_REQUEST", "message": e.message}
        chosen = choose_variant(request_key, self.weight, self.rng)
        try:
            served, preds = self._serve(chosen, df)
        except RequestError as e:  # the request does not fit the model's schema: the client's fault
            return e.status, {"error_code": "BAD_REQUEST", "message": e.message}
        except _ServingFailed as e:
            return 500, {"error_code": "INTERNAL_ERROR", "message": e.message}
        elapsed = time.perf_counter() - t0
        v = self.variants[served]
        self._observe(served, elapsed, preds)
        request_id = uuid.uuid4().hex
        if self.log is not None:
            self.log.append(_prediction_log_rows(df, preds, request_id, served, v.version, event, request_key))
        return 200, {
            "predictions": [float(p) for p in preds],
            "variant": served,
            "version": v.version,
            "request_id": request_id,
        }

    def _serve(self, chosen: str, df: Any) -> tuple[str, list[float]]:
        """(variant that answered, its predictions): ``chosen``, or the champion when the challenger fails.

        Counts each failure against its variant; raises :class:`RequestError` for the client's faults and
        :class:`_ServingFailed` when no variant answered."""
        try:
            return chosen, self._predict(chosen, df)
        except RequestError:
            self.metrics.inc("client_errors", chosen)
            raise
        except Exception:  # the variant failed
            self.metrics.inc("server_errors", chosen)
            if chosen != "challenger":
                raise _ServingFailed("the champion failed on this request") from None
        try:
            return "champion", self._predict("champion", df)
        except RequestError:
            self.metrics.inc("client_errors", "champion")
            raise
        except Exception:
            self.metrics.inc("server_errors", "champion")
            raise _ServingFailed("both variants failed on this request") from None

    def _observe(self, served: str, elapsed: float, preds: list[float]) -> None:
        """Count a served request, its latency and its predictions against ``served``."""
        self.metrics.inc("requests", served)
        self.metrics.observe("request_latency_seconds", served, elapsed, LATENCY_BUCKETS)
        for p in preds:  # both variants over the champion's bounds (see reload), so PSI compares like with like
            self.metrics.observe("prediction", served, float(p))

    def _predict(self, variant: str, df: Any) -> list[float]:
        missing = [c for c in self.request_columns if c not in df.columns]
        if missing:
            raise RequestError(400, f"missing input columns {missing}; the model needs {self.request_columns}")
        try:
            out = self.variants[variant].model.predict(df[self.request_columns])
        except Exception as e:
            if type(e).__name__ == "MlflowException" and "schema" in str(e).lower():
                raise RequestError(400, f"the request does not match the model's signature: {str(e)[:300]}") from None
            raise
        return list(out["prediction"] if hasattr(out, "columns") else out)

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


def _scoring_routes(service: ModelService) -> list[Any]:
    """``POST /invocations`` and the read-only routes (``/ping``, ``/health``, ``/version``, ``/metrics``)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def invocations(request: Request) -> JSONResponse:
        declared = int(request.headers.get("content-length") or 0)
        if declared > service.max_body:
            service.metrics.inc("client_errors", "none")
            return JSONResponse(
                {
                    "error_code": "BAD_REQUEST",
                    "message": f"request body is {declared} bytes; the limit is {service.max_body}",
                },
                413,
            )
        body = await request.body()
        status, payload = await run_in_threadpool(
            service.invoke,
            body,
            request.headers.get("content-type", ""),
            request.headers.get("x-request-key"),
            request.headers.get("x-event-time"),
        )
        return JSONResponse(payload, status)

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


def _admin_routes(service: ModelService, loader: Any) -> list[Any]:
    """``PUT /admin/weight`` and ``POST /admin/reload``, which the deploy DAG drives."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def set_weight(request: Request) -> JSONResponse:
        try:
            weight = float((await request.json())["weight"])
            service.set_weight(weight)
        except (KeyError, TypeError, ValueError) as e:
            return JSONResponse({"error_code": "BAD_REQUEST", "message": f'send {{"weight": <0..1>}}: {e}'}, 400)
        return JSONResponse(service.version_info())

    async def reload(request: Request) -> JSONResponse:
        if loader is None:
            return JSONResponse({"error_code": "NOT_CONFIGURED", "message": "this server has no model loader"}, 409)
        champion, challenger = await run_in_threadpool(loader)
        service.reload(champion, challenger)
        return JSONResponse(service.version_info())

    return [
        Route("/admin/weight", set_weight, methods=["PUT"]),
        Route("/admin/reload", reload, methods=["POST"]),
    ]


def create_app(service: ModelService, loader: Any = None) -> Any:
    """The ASGI app (Starlette) around a :class:`ModelService`.

    :param loader: ``() -> (champion, challenger)`` used by ``POST /admin/reload``
    """
    from starlette.applications import Starlette

    # The deploy DAG drives the admin routes; bind the server to loopback or a private network only.
    return Starlette(routes=[*_admin_routes(service, loader), *_scoring_routes(service)])


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
    args = ap.parse_args(argv)

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
    uvicorn.run(create_app(service, loader), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
