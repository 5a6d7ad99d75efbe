"""The report plugin: registered with Airflow, behind Airflow's login, serving reports from the
store, refusing ids and file names that would leave the run's report folder."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kdflow.reports_app import DAG_ID, app

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "kdflow_reports.py"
REPORT = b"<html><h1>cycle 1</h1><h1>cycle 2</h1></html>"
EVERY_ROUTE = ["/", f"/{DAG_ID}/manual__1/", "/runs/manual__1/report", "/runs/manual__1/report.json",
               "/runs/manual__1/report/report.md"]


@pytest.fixture(scope="module")
def airflow_db():
    """Token checks look up revoked tokens and DAG teams in the metadata DB, as in the api-server."""
    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True, capture_output=True)


@pytest.fixture()
def auth_manager(airflow_db, tmp_path, monkeypatch):
    """Airflow's SimpleAuthManager, initialised as the api-server does before it mounts plugins."""
    from airflow.api_fastapi.app import init_auth_manager, purge_cached_app

    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER",
                       "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "viewer:viewer")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(tmp_path / "passwords.json"))
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "kdflow-test-" + "x" * 64)
    purge_cached_app()
    yield init_auth_manager()
    purge_cached_app()


@pytest.fixture()
def viewer_token(auth_manager):
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth_manager.generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("KDFLOW__STORE__URL", str(tmp_path / "store"))
    from kdflow.store import ArtifactStore

    store = ArtifactStore(str(tmp_path / "store"))
    store.write_bytes("runs/manual__1/report/report.html", REPORT)
    store.write_json("runs/manual__1/report/report.json", {"cycles": [1, 2]})
    store.write_bytes("runs/manual__1/report/report.md", b"# cycle 2")
    store.write_bytes("runs/manual__1/report/plots/loss.png", b"\x89PNG")
    store.write_json("runs/manual__1/run.json", {"secret": "outside the report folder"})
    store.write_bytes("runs/other/report/report.html", b"<h1>another run</h1>")
    return store


@pytest.fixture()
def client(store, auth_manager):
    """No credentials: what anyone who can reach the api-server gets."""
    return TestClient(app)


@pytest.fixture()
def viewer(store, viewer_token):
    """A logged-in viewer, with the bearer header the REST API takes."""
    return TestClient(app, headers={"Authorization": f"Bearer {viewer_token}"})


def test_plugin_registers_app_and_views():
    spec = importlib.util.spec_from_file_location("kdflow_reports", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugin = module.KdflowReportsPlugin
    assert plugin.fastapi_apps[0]["url_prefix"] == "/kdflow"
    run_view = next(v for v in plugin.external_views if v["destination"] == "dag_run")
    assert run_view["href"] == "kdflow/{DAG_ID}/{RUN_ID}/" and not run_view["href"].startswith("/")


@pytest.mark.parametrize("path", EVERY_ROUTE)
def test_no_token_never_gets_a_report(client, path):
    page = client.get(path)
    assert page.status_code in (401, 403), (path, page.status_code)
    assert "cycle" not in page.text and "manual__1" not in page.text


@pytest.mark.parametrize("token", ["not-a-jwt", "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJ2aWV3ZXIifQ.c2lnbmF0dXJl"])
def test_forged_token_is_refused(client, token):
    for page in (client.get("/runs/manual__1/report", headers={"Authorization": f"Bearer {token}"}),
                 client.get(f"/{DAG_ID}/manual__1/", cookies={"_token": token})):
        assert page.status_code in (401, 403) and "cycle" not in page.text


def test_user_the_auth_manager_refuses_gets_403(viewer, auth_manager, monkeypatch):
    asked = []

    def refuse(**kwargs):
        asked.append(kwargs)
        return False

    monkeypatch.setattr(auth_manager, "is_authorized_dag", refuse)
    page = viewer.get(f"/{DAG_ID}/manual__1/")
    assert page.status_code == 403 and "cycle" not in page.text
    assert asked[0]["method"] == "GET" and asked[0]["details"].id == DAG_ID


def test_dag_run_tab_serves_the_report_with_the_ui_cookie(store, viewer_token):
    """The Report tab is an iframe: it carries the UI's ``_token`` cookie, not a header."""
    tab = TestClient(app, cookies={"_token": viewer_token})
    page = tab.get(f"/{DAG_ID}/manual__1/")
    assert page.status_code == 200 and page.text == REPORT.decode()


def test_viewer_reads_index_report_json_and_files(viewer):
    page = viewer.get("/")
    assert page.status_code == 200 and "manual__1" in page.text and "other" in page.text
    assert viewer.get("/runs/manual__1/report").text == REPORT.decode()
    assert viewer.get("/runs/manual__1/report.json").json() == {"cycles": [1, 2]}
    md = viewer.get("/runs/manual__1/report/report.md")
    assert md.status_code == 200 and md.text == "# cycle 2" and md.headers["content-type"].startswith("text/markdown")
    assert viewer.get("/runs/manual__1/report/plots/loss.png").headers["content-type"] == "image/png"


def test_report_follows_the_manifest_pointer(viewer, store):
    """A report published under a fresh prefix is found through the run's manifest entry."""
    store.write_bytes("runs/manual__1/report.v2/report.html", b"<h1>version 2</h1>")
    store.write_json("runs/manual__1/manifest/report.json", {"key": "runs/manual__1/report.v2/_COMPLETE.json"})
    assert viewer.get(f"/{DAG_ID}/manual__1/").text == "<h1>version 2</h1>"
    store.write_json("runs/manual__1/manifest/report.json", {"key": "runs/other/report/_COMPLETE.json"})
    assert viewer.get(f"/{DAG_ID}/manual__1/").text == REPORT.decode()  # never another run's folder


@pytest.mark.parametrize("path", ["/runs/%2E%2E/report", "/runs/.hidden/report", "/runs/%3Cscript%3Ex/report",
                                  "/runs/.manual__1/report", f"/{DAG_ID}/..manual__1/", f"/{DAG_ID}/%2E%2E/"])
def test_odd_run_ids_are_a_clear_400(viewer, path):
    """Not run ids Airflow makes: refused, not rewritten into some run's key (".manual__1" was manual__1)."""
    page = viewer.get(path)
    assert page.status_code == 400 and "not a valid run id" in page.text, (path, page.status_code)
    assert "cycle" not in page.text and "<script>" not in page.text


@pytest.mark.parametrize("name", ["..%2Frun.json", "%2E%2E/run.json", "plots/..%2F..%2Frun.json", "_COMPLETE.json",
                                  ".report.html", "run.py", "a/b/c.png"])
def test_file_names_outside_the_report_folder_are_a_clear_400(viewer, name):
    page = viewer.get(f"/runs/manual__1/report/{name}")
    assert page.status_code == 400 and "outside the report folder" not in page.text, (name, page.status_code)


@pytest.mark.parametrize("path", ["/runs/..%2F..%2Fruns%2Fother/report", "/runs/manual__1%2F..%2Fother/report.json",
                                  "/runs/manual__1/report/../../run.json"])
def test_slashes_in_run_ids_reach_no_report(viewer, path):
    page = viewer.get(path)
    assert page.status_code == 404 and "another run" not in page.text and "outside the report folder" not in page.text


def test_missing_report_and_other_dags_are_a_clear_404(viewer):
    page = viewer.get("/runs/manual__2/report")
    assert page.status_code == 404 and "no report.html yet" in page.text
    page = viewer.get("/some_other_dag/manual__1/")
    assert page.status_code == 404 and f"Only {DAG_ID} runs" in page.text
    assert viewer.get("/runs/manual__1/report/missing.md").status_code == 404
