"""A small FastAPI app that serves run reports from the artifact store; the Airflow plugin in
plugins/ mounts it in the api-server so a report is one click away from a DAG run."""

from __future__ import annotations

import html
import logging

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse

from kdflow.store import StoreError, run_key

log = logging.getLogger(__name__)

app = FastAPI(title="kdflow reports", description="Distillation run reports from the kdflow artifact store")


def _store():
    from kdflow.config import load_config
    from kdflow.store import ArtifactStore

    return ArtifactStore.from_config(load_config())


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
                        f"<body style='font-family:sans-serif;margin:2em'>{body}</body>", status_code=status)


@app.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    """Every run in the store that has a report, newest first."""
    store = _store()
    runs = sorted({k.split("/")[1] for k in store.list_keys("runs") if k.endswith("/report/report.html")}, reverse=True)
    items = "".join(f"<li><a href='runs/{html.escape(r)}/report'>{html.escape(r)}</a></li>" for r in runs)
    return _page("kdflow reports", f"<h1>Distillation reports</h1><p>Store: {html.escape(store.url)}</p>"
                                   f"<ul>{items or '<li>No report yet: trigger knowledge_distillation.</li>'}</ul>")


def _report(run_id: str, name: str) -> bytes:
    try:
        return _store().read_bytes(run_key(run_id, "report", name))
    except StoreError:
        raise HTTPException(status_code=404, detail=f"run {run_id} has no {name} yet (the run may still be going)") from None


@app.get("/runs/{run_id}/report", response_class=HTMLResponse)
def run_report(run_id: str) -> HTMLResponse:
    try:
        return HTMLResponse(_report(run_id, "report.html").decode("utf-8"))
    except HTTPException as exc:
        return _page("report not ready", f"<h1>No report yet</h1><p>{html.escape(exc.detail)}</p>", status=404)


@app.get("/{dag_id}/{run_id}/", response_class=HTMLResponse)
def dag_run_report(dag_id: str, run_id: str) -> HTMLResponse:
    """The URL the DAG-run tab opens: the report of that run."""
    return run_report(run_id)


@app.get("/runs/{run_id}/report.json")
def run_report_json(run_id: str) -> JSONResponse:
    import json

    return JSONResponse(json.loads(_report(run_id, "report.json")))
