"""A small FastAPI app that serves run reports from the artifact store; the Airflow plugin in
plugins/ mounts it in the api-server so a report is one click away from a DAG run.

Airflow does not put plugin apps behind its login, so every route here depends on Airflow's own
``requires_access_dag``: the caller needs a valid Airflow JWT (the UI's ``_token`` cookie, which the
Report tab's iframe sends, or an ``Authorization: Bearer`` header) of a user the configured auth
manager (SimpleAuthManager, FAB, ...) lets read the runs of the kdflow DAG. Without one the answer
is 401/403, never a report. The app is only ever imported inside Airflow, hence the Airflow
imports at module level.
"""

from __future__ import annotations

import html
import logging
import re

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response

from kdflow.pipeline.spec import DAG_ID  # the only DAG whose runs write reports
from kdflow.store import DIR_MARKER, StoreError, run_key

log = logging.getLogger(__name__)

# Airflow's own run id alphabet ([scheduler] allowed_run_id_pattern); dots only inside, never "..".
_RUN_ID = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_~:+-][A-Za-z0-9_.~:+-]{0,249}$")
# A file of the report folder: "report.md", "plots/loss.png"; no hidden files, no "..", no markers.
_FILE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json", ".md": "text/markdown; charset=utf-8",
               ".png": "image/png"}

app = FastAPI(title="kdflow reports", description="Distillation run reports from the kdflow artifact store",
              dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))])


def _store():
    from kdflow.config import load_config
    from kdflow.store import ArtifactStore

    return ArtifactStore.from_config(load_config())


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
                        f"<body style='font-family:sans-serif;margin:2em'>{body}</body>", status_code=status)


def checked_run_id(run_id: str) -> str:
    """The run id if it is one Airflow could have made; a 400 otherwise (the store would quietly
    rewrite a strange id into another run's key, so refuse it instead)."""
    if not _RUN_ID.match(run_id):
        raise HTTPException(status_code=400, detail="not a valid run id")
    return run_id


def checked_file_name(name: str) -> str:
    """A relative path inside the run's report folder, or a 400: no traversal, no hidden files and
    only the kinds of file a report holds."""
    parts = name.split("/")
    if len(parts) > 2 or not all(_FILE_PART.match(p) for p in parts) or name == DIR_MARKER:
        raise HTTPException(status_code=400, detail="not a report file name")
    if "." + name.rsplit(".", 1)[-1] not in MEDIA_TYPES:
        raise HTTPException(status_code=400, detail=f"reports hold only {', '.join(sorted(MEDIA_TYPES))} files")
    return name


def report_folder(store, run_id: str) -> str:
    """The store key of the run's report folder: the folder its manifest entry points at (so a
    publish under a fresh prefix is followed), else the default ``runs/<run_id>/report``."""
    run_prefix = run_key(run_id) + "/"
    try:
        marker_key = store.read_json(run_key(run_id, "manifest", "report.json"))["key"]
    except (StoreError, KeyError, TypeError):
        return run_key(run_id, "report")
    folder = str(marker_key).rsplit("/", 1)[0]
    if not folder.startswith(run_prefix) or ".." in folder.split("/"):
        log.warning("report manifest of run %s points outside the run (%s); using the default folder", run_id, folder)
        return run_key(run_id, "report")
    return folder


def _report(run_id: str, name: str) -> bytes:
    name = checked_file_name(name)
    store = _store()
    try:
        return store.read_bytes(f"{report_folder(store, checked_run_id(run_id))}/{name}")
    except StoreError:
        raise HTTPException(status_code=404,
                            detail=f"run {run_id} has no {name} yet (the run may still be going)") from None


@app.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    """Every run in the store that has a report, newest first."""
    store = _store()
    runs = sorted({k.split("/")[1] for k in store.list_keys("runs")
                   if k.endswith(("/report/report.html", "/manifest/report.json"))}, reverse=True)
    items = "".join(f"<li><a href='runs/{html.escape(r)}/report'>{html.escape(r)}</a></li>" for r in runs)
    return _page("kdflow reports", f"<h1>Distillation reports</h1><p>Store: {html.escape(store.url)}</p>"
                                   f"<ul>{items or f'<li>No report yet: trigger {DAG_ID}.</li>'}</ul>")


@app.get("/runs/{run_id}/report", response_class=HTMLResponse)
def run_report(run_id: str) -> HTMLResponse:
    try:
        return HTMLResponse(_report(run_id, "report.html").decode("utf-8"))
    except HTTPException as exc:
        title = "No report yet" if exc.status_code == 404 else "Not a report"
        return _page(title, f"<h1>{title}</h1><p>{html.escape(exc.detail)}</p>", status=exc.status_code)


@app.get("/{dag_id}/{run_id}/", response_class=HTMLResponse)
def dag_run_report(dag_id: str, run_id: str) -> HTMLResponse:
    """The URL the DAG-run tab opens: the report of that run. The tab shows on every DAG's runs, but
    only kdflow's DAG writes reports (and run ids are unique per DAG only), so others get a 404."""
    if dag_id != DAG_ID:
        return _page("no report", f"<h1>No report</h1><p>Only {DAG_ID} runs have kdflow reports.</p>", status=404)
    return run_report(run_id)


@app.get("/runs/{run_id}/report.json")
def run_report_json(run_id: str) -> JSONResponse:
    import json

    return JSONResponse(json.loads(_report(run_id, "report.json")))


@app.get("/runs/{run_id}/report/{name:path}")
def run_report_file(run_id: str, name: str) -> Response:
    """Any file of the report folder (report.md, plots/*.png), for download."""
    media_type = MEDIA_TYPES["." + checked_file_name(name).rsplit(".", 1)[-1]]
    return Response(_report(run_id, name), media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})
