"""The report plugin: registered with Airflow, serving reports from the store, escaping ids."""

import importlib.util
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kdflow.reports_app import app

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "kdflow_reports.py"


@pytest.fixture()
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("KDFLOW__STORE__URL", str(tmp_path))
    from kdflow.store import ArtifactStore

    store = ArtifactStore(str(tmp_path))
    store.write_bytes("runs/manual__1/report/report.html", b"<html><h1>cycle 1</h1><h1>cycle 2</h1></html>")
    store.write_json("runs/manual__1/report/report.json", {"cycles": [1, 2]})
    return TestClient(app)


def test_plugin_registers_app_and_views():
    spec = importlib.util.spec_from_file_location("kdflow_reports", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugin = module.KdflowReportsPlugin
    assert plugin.fastapi_apps[0]["url_prefix"] == "/kdflow"
    run_view = next(v for v in plugin.external_views if v["destination"] == "dag_run")
    assert run_view["href"] == "kdflow/{DAG_ID}/{RUN_ID}/" and not run_view["href"].startswith("/")


def test_index_lists_runs_with_reports(client):
    page = client.get("/")
    assert page.status_code == 200 and "manual__1" in page.text


def test_dag_run_tab_serves_the_report(client):
    page = client.get("/knowledge_distillation/manual__1/")
    assert page.status_code == 200 and "cycle 2" in page.text
    assert client.get("/runs/manual__1/report.json").json() == {"cycles": [1, 2]}


def test_missing_report_is_a_clear_404(client):
    page = client.get("/runs/<script>x/report")
    assert page.status_code == 404
    assert "<script>x" not in page.text and "no report.html yet" in page.text
