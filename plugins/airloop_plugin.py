"""airloop's Airflow plugin: what must be a plugin, and nothing else.

* A FastAPI app mounted on the API server at ``/airloop``: the quarantine page and read-only access to
  validation reports under the data root (the "Validation report" extra link points here). Every route,
  the API docs included (``/airloop/docs``, ``/airloop/redoc``, ``/airloop/openapi.json``), needs a
  logged-in Airflow user (the UI's session cookie or a bearer token).
* ``POST /airloop/webhooks/<source>``: signed webhook deliveries that start DAG runs
  (``airloop_webhook_routes``; the signature is their authentication, no login).
* ``/airloop/runbooks/<kind>``: the on-call runbooks, rendered, linked from alerts and failed tasks.
* A "Quarantine" entry in the UI's navigation.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from airflow.api_fastapi.core_api.security import get_user
from airflow.plugins_manager import AirflowPlugin
from airloop_webhook_routes import router as webhook_router
from fastapi import Depends, FastAPI, HTTPException
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse

from airloop_airflow.links.ui import RunbookLink

# Only these zones of the data root are served, and only these file types.
SERVED_ZONES = ("reports", "quarantine")
SERVED_SUFFIXES = {".html": "text/html", ".json": "application/json"}

#: where the plugin's app is mounted on the API server
PREFIX = "/airloop"

# FastAPI's own docs routes cannot take a dependency: they are off, and served below behind the login
app = FastAPI(
    title="airloop",
    description="Quarantine, reports, runbooks and webhooks of airloop pipelines",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)
app.include_router(webhook_router)


@app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(get_user)])
def openapi_spec() -> JSONResponse:
    """The OpenAPI description of these routes, for a logged-in user only."""
    return JSONResponse(app.openapi())


@app.get("/docs", include_in_schema=False, dependencies=[Depends(get_user)])
def swagger_ui() -> HTMLResponse:
    """Swagger UI over :func:`openapi_spec` (the browser sends the UI's session cookie along)."""
    return get_swagger_ui_html(openapi_url=f"{PREFIX}/openapi.json", title="airloop API")


@app.get("/redoc", include_in_schema=False, dependencies=[Depends(get_user)])
def redoc() -> HTMLResponse:
    """ReDoc over :func:`openapi_spec`."""
    return get_redoc_html(openapi_url=f"{PREFIX}/openapi.json", title="airloop API")


def _data_root() -> Path:
    from airloop.storage import default_data_root_uri

    uri = default_data_root_uri()
    if "://" in uri and not uri.startswith("file://"):
        raise HTTPException(501, f"the data root {uri} is object storage; open reports there directly")
    return Path(uri.removeprefix("file://")).resolve()


@app.get("/files/{path:path}", dependencies=[Depends(get_user)])
def read_file(path: str) -> FileResponse:
    """A report or result file from ``reports/`` or ``quarantine/`` of the data root.

    The path is confined like every outside input (``airloop.confine``): a NUL byte or a percent-escape
    left after the URL's own decoding is a 400, ``..`` or a place outside the served zones once symlinks
    are resolved a 403; the file served is the resolved one.
    """
    from airloop.confine import UriRejected, confine_uri

    root = _data_root()
    zones = [str(root / z) for z in SERVED_ZONES]
    try:
        target = Path(confine_uri(str(root / path.lstrip("/")), zones, ["file"]))
    except UriRejected as e:
        if e.rule in ("nul", "control", "percent", "length"):
            raise HTTPException(400, f"path: {e}") from None
        raise HTTPException(
            403, f"only files under {', '.join(SERVED_ZONES)}/ of the data root are served ({e.rule})"
        ) from None
    media = SERVED_SUFFIXES.get(target.suffix)
    if media is None:
        raise HTTPException(
            403, f"only {', '.join(SERVED_SUFFIXES)} files are served, not {target.suffix or 'this file'}"
        )
    if not target.is_file():
        raise HTTPException(404, f"no such report: {path}")
    return FileResponse(target, media_type=media)


@app.get("/quarantine", response_class=HTMLResponse, dependencies=[Depends(get_user)])
def quarantine_page() -> str:
    """Every quarantined batch of every model, with its failures and a link to its report."""
    from airloop.config import load_all_pipelines
    from airloop.quarantine import list_quarantined
    from airloop.storage import DataRoot

    root = DataRoot(str(_data_root()))
    entries = list_quarantined(root, [c.name for c in load_all_pipelines()])
    e = html.escape
    rows = []
    for q in entries:
        rel = root.relative(q.report_uri) or ""
        failures = "".join(f"<li>{e(f[:300])}</li>" for f in q.failures[:8])
        decided = f"<br><small>{e(str(q.decision))}</small>" if q.decision else ""
        rows.append(
            f"<tr><td>{e(q.model)}</td><td>{e(q.partition)}</td><td>{e(q.status)}{decided}</td><td>{e(q.stage)}</td>"
            f"<td><ul>{failures}</ul></td><td><a href='files/{e(rel)}' target='_blank'>report</a></td></tr>"
        )
    body = "".join(rows) or "<tr><td colspan=6>No quarantined batches.</td></tr>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>airloop quarantine</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5rem}} table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}}</style></head>
<body><h1>Quarantined batches</h1>
<p>Data root: <code>{e(root.uri)}</code>. \
Release (re-validate and publish): <code>airloop quarantine release MODEL PARTITION</code>;
reject: <code>airloop quarantine reject MODEL PARTITION --reason "..."</code>.</p>
<table><tr><th>model</th><th>partition</th><th>status</th><th>stage</th><th>failures</th><th>report</th></tr>{body}</table>
</body></html>"""


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5rem;max-width:60rem}} code,pre{{background:#f6f8fa}}
pre{{padding:.6rem;overflow-x:auto}}</style></head><body>{body}</body></html>"""


@app.get("/runbooks", response_class=HTMLResponse, dependencies=[Depends(get_user)])
def runbook_index() -> str:
    """Every runbook, by failure kind."""
    from airloop.runbooks import RUNBOOKS, runbook_path

    items = "".join(
        f"<li><a href='runbooks/{k}'>{html.escape(runbook_path(k).read_text().splitlines()[0].lstrip('# '))}</a>"
        f" <small>({k})</small></li>"
        for k in RUNBOOKS
    )
    return _PAGE.format(title="airloop runbooks", body=f"<h1>Runbooks</h1><ul>{items}</ul>")


@app.get("/runbooks/for-task", dependencies=[Depends(get_user)])
def runbook_for_task(dag_id: str, run_id: str, task_id: str) -> RedirectResponse:
    """The runbook of a task's failure: the kind its alert recorded, else what the task's failure means."""
    from airloop.alerts import read_alerts
    from airloop.storage import DataRoot
    from airloop_airflow.notifiers.alerts import TASK_KINDS

    model = dag_id.split("__")[0]
    kind = None
    try:
        alerts = read_alerts(DataRoot(str(_data_root())), model)
    except HTTPException:
        alerts = []
    for a in reversed(alerts):
        if (a.get("dag_id"), a.get("run_id"), a.get("task_id")) == (dag_id, run_id, task_id):
            kind = a["kind"]
            break
    kind = kind or TASK_KINDS.get(task_id)
    return RedirectResponse(f"/airloop/runbooks/{kind}" if kind else "/airloop/runbooks", status_code=307)


@app.get("/runbooks/{kind}", response_class=HTMLResponse, dependencies=[Depends(get_user)])
def runbook_page(kind: str) -> str:
    """One runbook, rendered from ``include/runbooks/``."""
    from markdown_it import MarkdownIt

    from airloop.runbooks import runbook_path

    try:
        path = runbook_path(kind)
    except KeyError as e:
        raise HTTPException(404, str(e.args[0])) from None
    body = MarkdownIt("commonmark", {"html": False}).render(path.read_text())
    footer = f"<small>include/runbooks/{html.escape(path.name)} · <a href='../runbooks'>all runbooks</a></small>"
    return _PAGE.format(title=f"Runbook: {html.escape(kind)}", body=f"{body}<hr>{footer}")


class AirloopPlugin(AirflowPlugin):
    name = "airloop"
    global_operator_extra_links = [RunbookLink()]
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "airloop"}]
    external_views = [
        {
            "name": "Quarantine",
            "href": "/airloop/quarantine",
            "destination": "nav",
            "category": "browse",
            "url_route": "airloop-quarantine",
        }
    ]


# Keep the environment Airflow gives tasks free of GX telemetry when reports are rendered here.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
