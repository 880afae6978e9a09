"""The webhook routes the airloop plugin mounts on the API server: ``POST /airloop/webhooks/<source>``.

One route per configured source (``webhooks:`` in a pipeline config). A delivery goes through, in order:

1. unknown source: 404;
2. body larger than the source's ``max_body_bytes`` (by ``Content-Length`` or while reading): 413;
3. signature checked on the raw bytes, in constant time, before any parsing (``airloop.webhooks``): 401;
4. payload checked against the source's schema: 400 naming the bad field;
5. the DAG run is created in the metadata database in this process (no second HTTP hop), with run id
   ``webhook__<source>__<delivery id>``: 202 with the run id. A repeated delivery finds that run and
   answers 200 with the same run id; it creates nothing.

The routes need no Airflow login: the signature is the authentication. Secrets come from the Airflow
connection named by the source: its password, plus ``previous_secrets`` (a list in its extra) while a
rotation is under way.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airloop.config import PipelineConfig, WebhookSourceConfig
    from airloop.webhooks import BatchLanded, Delivery

log = logging.getLogger(__name__)
router = APIRouter()


def _answer(status: int, **body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def _reject(status: int, detail: str, **extra: Any) -> JSONResponse:
    return _answer(status, detail=detail, **extra)


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than ``limit`` bytes (reading stops there)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _secrets(source: WebhookSourceConfig) -> list[str]:
    from airflow.models.connection import Connection

    conn = Connection.get_connection_from_secrets(source.connection_id)
    extra = conn.extra_dejson
    older = extra.get("previous_secrets", [])
    return [s for s in [conn.password or "", *([older] if isinstance(older, str) else older)] if s]


def _allowed_prefixes(cfg: PipelineConfig, source: WebhookSourceConfig) -> tuple[str, ...]:
    """The source's ``allowed_prefixes``, else the model's landing folder (where ingestion looks itself)."""
    if source.allowed_prefixes:
        return source.allowed_prefixes
    from airloop.ingest import landing_prefix
    from airloop.storage import DataRoot, default_data_root_uri

    return (landing_prefix(cfg, DataRoot(default_data_root_uri())),)


def _ui_url(dag_id: str, run_id: str) -> str:
    from urllib.parse import quote

    from airloop_airflow.links.ui import ui_base_url

    return f"{ui_base_url()}/dags/{dag_id}/runs/{quote(run_id, safe='')}"


class RunConflict(Exception):
    """The run cannot be created next to an existing one (not the same delivery): answered with 409."""


def create_run(dag_id: str, run_id: str, day: dt.date, conf: dict[str, Any], source: str) -> tuple[str, bool]:
    """Create the run (or find it); returns (state, created)."""
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    def existing(session: Any) -> DagRun | None:
        return session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))

    with create_session() as session:
        found = existing(session)
        if found is not None:
            return str(found.state), False
        dag = DBDagBag(load_op_links=False).get_latest_version_of_dag(dag_id, session=session)
        if dag is None:
            raise LookupError(f"DAG {dag_id} is not parsed yet")
        start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
        try:
            # the run of that day's data interval: Airflow keeps one run per logical date, so a second
            # delivery (another id) for a day that already has a run is refused with 409 (re-run = clear it)
            run = dag.create_dagrun(
                run_id=run_id,
                logical_date=start,
                data_interval=(start, start + dt.timedelta(days=1)),
                run_after=dt.datetime.now(dt.UTC),
                conf=conf,
                run_type=DagRunType.MANUAL,
                triggered_by=DagRunTriggeredByType.REST_API,
                triggering_user_name=f"webhook:{source}",
                state=DagRunState.QUEUED,
                session=session,
            )
            session.flush()
            return str(run.state), True
        except IntegrityError as e:  # the same delivery, at the same moment, on another worker
            session.rollback()
            found = existing(session)
            if found is not None:
                return str(found.state), False
            same_day = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.logical_date == start))
            if same_day is None:
                raise RunConflict(f"the run conflicts with an existing one: {e.orig}") from e
            earlier = (same_day.conf or {}).get("source_uri") or "the landing file"
            raise RunConflict(
                f"{day} already has run {same_day.run_id} ({same_day.state}) of {dag_id}, reading {earlier}. "
                f"To ingest that day again from there, clear it: airloop airflow tasks clear {dag_id} -s {day} "
                f"-e {day} --yes; to ingest another file for it, delete that run first, then send this delivery again"
            ) from e


def _check_delivery(
    cfg: PipelineConfig, source: WebhookSourceConfig, secrets: list[str], headers: Mapping[str, str], body: bytes
) -> tuple[Delivery, BatchLanded]:
    """Signature, then payload schema, then the URI's prefix: raises ``WebhookRejected`` at the first that fails."""
    from airloop import webhooks as wh

    delivery = wh.verify(source.scheme, secrets, headers, body, tolerance_s=source.tolerance_seconds)
    payload = wh.parse_payload(source.payload, body)
    assert isinstance(payload, wh.BatchLanded)
    wh.check_uri_allowed(payload.source_uri, _allowed_prefixes(cfg, source))
    return delivery, payload


def _run_conf(source: str, delivery_id: str, payload: BatchLanded) -> dict[str, Any]:
    """The conf of the run a delivery triggers: what to read, and where the delivery came from."""
    return {
        "source_uri": payload.source_uri,
        "webhook": {
            "source": source,
            "delivery_id": delivery_id,
            "received_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "rows": payload.rows,
            "sha256": payload.sha256,
        },
    }


async def _trigger(source: str, dag_id: str, run_id: str, delivery_id: str, payload: BatchLanded) -> JSONResponse:
    """Create (or find) the delivery's run: 202 created, 200 already there, 503/409 when it cannot be."""
    from starlette.concurrency import run_in_threadpool

    conf = _run_conf(source, delivery_id, payload)
    try:
        state, created = await run_in_threadpool(create_run, dag_id, run_id, payload.day, conf, source)
    except LookupError as e:
        return _reject(503, f"{e}; retry later", retry_after_s=30)
    except RunConflict as e:
        return _reject(409, str(e), dag_id=dag_id)
    except Exception as e:  # e.g. SQLite "database is locked": the sender retries, the run id keeps it safe
        log.warning("webhook %s: could not create run %s: %s", source, run_id, e)
        return _reject(503, "the metadata database is busy; retry the same delivery", retry_after_s=5)
    answer = {
        "dag_id": dag_id,
        "dag_run_id": run_id,
        "state": state,
        "created": created,
        "logical_date": payload.day.isoformat(),
        "url": _ui_url(dag_id, run_id),
    }
    log.info(
        "webhook %s: delivery %s -> %s/%s (%s)",
        source,
        delivery_id,
        dag_id,
        run_id,
        "created" if created else "already there",
    )
    return _answer(202 if created else 200, **answer)


@router.post("/webhooks/{source_name}", status_code=202)
async def receive(source_name: str, request: Request) -> JSONResponse:
    """Turn one signed delivery into a DAG run (202), or say exactly why not (4xx)."""
    from starlette.concurrency import run_in_threadpool

    from airloop import webhooks as wh
    from airloop.config import find_webhook_source

    found = find_webhook_source(source_name)
    if found is None:
        return _reject(404, f"no webhook source named {source_name!r}")
    cfg, source = found
    body = await _read_capped(request, source.max_body_bytes)
    if body is None:
        return _reject(413, f"body larger than {source.max_body_bytes} bytes")
    try:
        secrets = await run_in_threadpool(_secrets, source)
    except Exception as e:  # a missing connection is the server's configuration, not the sender's fault
        log.error("webhook %s: cannot read connection %s: %s", source.name, source.connection_id, e)
        return _reject(500, f"webhook source {source.name} has no usable secret (connection {source.connection_id})")
    try:
        delivery, payload = _check_delivery(cfg, source, secrets, request.headers, body)
    except wh.WebhookRejected as e:
        log.info("webhook %s: refused (%s): %s", source.name, e.status, e.message)
        return _reject(e.status, e.message, **({"field": e.field} if e.field else {}))
    dag_id = cfg.dag_id(source.dag)
    run_id = wh.run_id_for(source.name, delivery.delivery_id)
    return await _trigger(source.name, dag_id, run_id, delivery.delivery_id, payload)
