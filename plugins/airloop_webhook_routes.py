"""The webhook routes the airloop plugin mounts on the API server: ``POST /airloop/webhooks/<source>``.

One route per configured source (``webhooks:`` in a pipeline config). A delivery goes through, in order:

1. unknown source: 404;
2. body larger than the source's ``max_body_bytes`` (by ``Content-Length`` or while reading): 413;
3. the source's secrets: a missing connection, or one without a usable secret, is the operator's to fix:
   503 with ``Retry-After``, naming the connection (the sender retries until it is there);
4. signature checked on the raw bytes, in constant time, before any parsing (``airloop.webhooks``): 401;
5. payload checked against the source's schema (400 naming the bad field), ``source_uri`` confined to the
   source's prefixes and protocols (400, ``airloop.confine``), ``day`` a day on which the model's schedule
   starts an interval, within its dates (400 with the allowed range);
6. the DAG run is created in the metadata database in this process (no second HTTP hop), with run id
   ``webhook__<source>__<delivery id>``: 202 with the run id. A repeated delivery finds that run and
   answers 200 with the same run id; so does the same signed body under another delivery id (a replay:
   ``replay_of`` names the first delivery). Either way nothing is created. Another delivery for a day
   that has its run: 409, saying how to re-run that day. A run that would have no task is never created.

A 5xx answer is only ever a 503 with ``Retry-After``, for a transient condition: the connection missing,
the DAG not parsed yet, the metadata database busy. Everything the sender can fix is a 4xx with a reason.

The routes need no Airflow login: the signature is the authentication. Secrets come from the Airflow
connection named by the source: its password, plus ``previous_secrets`` (a list in its extra) while a
rotation is under way.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from airloop.config import PipelineConfig, WebhookSourceConfig
    from airloop.webhooks import AcceptedDelivery

log = logging.getLogger(__name__)
router = APIRouter()

#: seconds a sender waits before retrying, by transient condition
RETRY_NOT_SET_UP_S, RETRY_NOT_PARSED_S, RETRY_DB_BUSY_S = 60, 30, 5


def _answer(status: int, **body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def _reject(status: int, detail: str, **extra: Any) -> JSONResponse:
    return _answer(status, detail=detail, **extra)


def _unavailable(detail: str, retry_after_s: int) -> JSONResponse:
    """A 503: a transient condition the sender should wait out; ``Retry-After`` says how long."""
    return JSONResponse(
        {"detail": detail, "retry_after_s": retry_after_s},
        status_code=503,
        headers={"Retry-After": str(retry_after_s)},
    )


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


class SourceNotReady(Exception):
    """The source's connection is missing or holds no usable secret (never says which secret or why)."""


def _secrets(source: WebhookSourceConfig) -> list[str]:
    """The source's secrets, each checked to be a usable HMAC key.

    :raises SourceNotReady: no connection, no secret, or a ``whsec_`` secret that is not base64
    """
    from airflow.models.connection import Connection

    from airloop.webhooks import secret_key

    try:
        conn = Connection.get_connection_from_secrets(source.connection_id)
    except Exception as e:  # AirflowNotFoundException, or a secrets backend that is down
        raise SourceNotReady(f"connection {source.connection_id} cannot be read ({type(e).__name__})") from None
    extra = conn.extra_dejson
    older = extra.get("previous_secrets", [])
    secrets = [s for s in [conn.password or "", *([older] if isinstance(older, str) else older)] if s]
    if not secrets:
        raise SourceNotReady(f"connection {source.connection_id} holds no secret (password)")
    for secret in secrets:
        try:
            secret_key(secret)
        except ValueError:
            raise SourceNotReady(
                f"connection {source.connection_id} holds a whsec_ secret that is not base64"
            ) from None
    return secrets


def _confinement(cfg: PipelineConfig, source: WebhookSourceConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Where the source's ``source_uri`` may point (its ``allowed_prefixes``, else the model's landing
    folder, where ingestion looks itself) and with which protocols (the model's source's)."""
    from airloop.confine import source_protocols
    from airloop.ingest import landing_prefix
    from airloop.storage import DataRoot, default_data_root_uri

    root = DataRoot(default_data_root_uri())
    prefixes = source.allowed_prefixes or (landing_prefix(cfg, root),)
    return prefixes, source_protocols(cfg, root)


def _ui_url(dag_id: str, run_id: str) -> str:
    from urllib.parse import quote

    from airloop_airflow.links.ui import ui_base_url

    return f"{ui_base_url()}/dags/{dag_id}/runs/{quote(run_id, safe='')}"


class RunConflict(Exception):
    """The run cannot be created next to an existing one (not the same delivery): answered with 409."""


class NoTasks(Exception):
    """The run would have no task (a day outside the DAG's dates): answered with 400 on ``day``."""


@dataclass(frozen=True)
class RunFound:
    """The run a delivery maps to: created now, or found (the same delivery, or a replay of its body)."""

    run_id: str
    state: str
    created: bool
    replay_of: str | None = None


def _webhook_conf(run: Any) -> dict[str, Any]:
    conf = run.conf if isinstance(run.conf, dict) else {}
    hook = conf.get("webhook")
    return hook if isinstance(hook, dict) else {}


def _found(session: Any, dag_id: str, run_id: str, start: dt.datetime, body_sha256: str) -> RunFound | None:
    """The delivery's own run, or the run of its day when that run came from the same signed body.

    :raises RunConflict: the day has a run from something else
    """
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    own = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if own is not None:
        return RunFound(own.run_id, str(own.state), False)
    same_day = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.logical_date == start))
    if same_day is None:
        return None
    hook = _webhook_conf(same_day)
    if hook.get("body_sha256") == body_sha256:
        return RunFound(same_day.run_id, str(same_day.state), False, replay_of=str(hook.get("delivery_id")))
    raise RunConflict(_conflict_message(dag_id, start, same_day))


def _conflict_message(dag_id: str, start: dt.datetime, run: Any) -> str:
    """Why a second delivery for a day is refused, and the safe ways on: never "delete the run" (that would
    let a replayed delivery through)."""
    day = start.date()
    earlier = (run.conf or {}).get("source_uri") if isinstance(run.conf, dict) else None
    return (
        f"{day} already has run {run.run_id} ({run.state}) of {dag_id}, reading {earlier or 'the landing file'}; "
        "a day has one run, and a delivery never replaces it, so this one created nothing and should not be "
        f"retried. To ingest that day again, re-run it: airloop airflow tasks clear {dag_id} -s {day} -e {day} "
        "--yes (it reads its source_uri anew). A different file for that day is for an authorised user to put "
        "at that source_uri before the re-run."
    )


def create_run(
    dag_id: str,
    run_id: str,
    interval: tuple[dt.datetime, dt.datetime],
    conf: dict[str, Any],
    source: str,
) -> RunFound:
    """Create the run of ``interval`` (or find it, or the run of the same body), in one transaction.

    Race-safe by the metadata database's unique keys: (dag_id, run_id) for a repeated delivery and
    (dag_id, logical_date) for a day; a concurrent insert that loses reads the winner and answers as if it
    had come second.

    :raises LookupError: the DAG is not parsed yet
    :raises RunConflict: the day has a run from another body
    :raises NoTasks: the run would have no task instance
    """
    from airflow.models.dagbag import DBDagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from sqlalchemy import func, select
    from sqlalchemy.exc import IntegrityError

    start, end = interval
    body_sha256 = conf["webhook"]["body_sha256"]
    with create_session() as session:
        found = _found(session, dag_id, run_id, start, body_sha256)
        if found is not None:
            return found
        dag = DBDagBag(load_op_links=False).get_latest_version_of_dag(dag_id, session=session)
        if dag is None:
            raise LookupError(f"DAG {dag_id} is not parsed yet")
        try:
            # the run of that data interval: Airflow keeps one run per logical date
            run = dag.create_dagrun(
                run_id=run_id,
                logical_date=start,
                data_interval=(start, end),
                run_after=dt.datetime.now(dt.UTC),
                conf=conf,
                run_type=DagRunType.MANUAL,
                triggered_by=DagRunTriggeredByType.REST_API,
                triggering_user_name=f"webhook:{source}",
                state=DagRunState.QUEUED,
                session=session,
            )
            session.flush()
        except IntegrityError as e:  # the same delivery or body, at the same moment, on another worker
            session.rollback()
            found = _found(session, dag_id, run_id, start, body_sha256)
            if found is not None:
                return found
            raise RunConflict(f"the run conflicts with an existing one: {e.orig}") from e
        tasks = session.scalar(
            select(func.count())
            .select_from(TaskInstance)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        )
        if not tasks:
            session.rollback()
            raise NoTasks(
                f"day: {start.date()} is outside the dates of {dag_id}: its run would have no task, so none was created"
            )
        return RunFound(run_id, str(run.state), True)


def _run_conf(source: str, accepted: AcceptedDelivery) -> dict[str, Any]:
    """The conf of the run a delivery triggers: what to read, where the delivery came from, what the sender
    announced (``rows``, ``sha256``: the gate compares them with what it reads) and the hash of the signed
    body (a replay under another delivery id finds this run by it)."""
    payload = accepted.payload
    return {
        "source_uri": payload.source_uri,
        "webhook": {
            "source": source,
            "delivery_id": accepted.delivery.delivery_id,
            "received_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "rows": payload.rows,
            "sha256": payload.sha256,
            "body_sha256": accepted.body_sha256,
        },
    }


async def _trigger(source: str, dag_id: str, run_id: str, accepted: AcceptedDelivery) -> JSONResponse:
    """Create (or find) the delivery's run: 202 created, 200 already there, 409/400 when it cannot be,
    503 (with Retry-After) while the DAG is not parsed or the database is busy."""
    from sqlalchemy.exc import InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout
    from starlette.concurrency import run_in_threadpool

    delivery_id = accepted.delivery.delivery_id
    conf = _run_conf(source, accepted)
    try:
        found = await run_in_threadpool(create_run, dag_id, run_id, accepted.interval, conf, source)
    except LookupError as e:
        return _unavailable(f"{e}; retry later", RETRY_NOT_PARSED_S)
    except RunConflict as e:
        return _reject(409, str(e), dag_id=dag_id)
    except NoTasks as e:
        return _reject(400, str(e), field="day")
    except (OperationalError, InterfaceError, PoolTimeout) as e:  # e.g. SQLite "database is locked"
        log.warning("webhook %s: could not create run %s: %s", source, run_id, type(e).__name__)
        return _unavailable("the metadata database is busy; retry the same delivery", RETRY_DB_BUSY_S)
    answer: dict[str, Any] = {
        "dag_id": dag_id,
        "dag_run_id": found.run_id,
        "state": found.state,
        "created": found.created,
        "logical_date": accepted.payload.day.isoformat(),
        "url": _ui_url(dag_id, found.run_id),
    }
    if found.replay_of is not None:
        answer["replay_of"] = found.replay_of
        answer["detail"] = (
            f"the same signed body as delivery {found.replay_of}, which made run {found.run_id}: nothing was created"
        )
    outcome = "created" if found.created else ("replay of " + found.replay_of if found.replay_of else "already there")
    log.info("webhook %s: delivery %s -> %s/%s (%s)", source, delivery_id, dag_id, found.run_id, outcome)
    return _answer(202 if found.created else 200, **answer)


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
    except SourceNotReady as e:  # the server's configuration, not the sender's fault: it retries
        log.error("webhook %s: %s", source.name, e)
        return _unavailable(
            f"webhook source {source.name} is not set up: connection {source.connection_id} is missing or holds "
            "no usable secret; the operator adds it (README, Webhooks). Retry later",
            RETRY_NOT_SET_UP_S,
        )
    prefixes, protocols = _confinement(cfg, source)
    try:
        accepted = wh.check_delivery(
            source, cfg.schedule, secrets, request.headers, body, prefixes=prefixes, protocols=protocols
        )
    except wh.WebhookRejected as e:
        log.info("webhook %s: refused (%s): %s", source.name, e.status, e.message)
        return _reject(e.status, e.message, **({"field": e.field} if e.field else {}))
    dag_id = cfg.dag_id(source.dag)
    run_id = wh.run_id_for(source.name, accepted.delivery.delivery_id)
    return await _trigger(source.name, dag_id, run_id, accepted)
