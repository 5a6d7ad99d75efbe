"""Airflow 3 plugin: the run report one click away (a "Report" tab on every DAG run, and a
"Distillation reports" entry in the Browse menu). The app itself lives in kdflow.reports_app; Airflow
mounts plugin apps without its login, so that app checks the Airflow user itself."""

from airflow.plugins_manager import AirflowPlugin

from kdflow.reports_app import app

URL_PREFIX = "/kdflow"


class KdflowReportsPlugin(AirflowPlugin):
    name = "kdflow_reports"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "kdflow reports"}]
    external_views = [
        {"name": "Report", "href": "kdflow/{DAG_ID}/{RUN_ID}/", "destination": "dag_run", "url_route": "kdflow-report"},
        {"name": "Distillation reports", "href": "kdflow/", "destination": "nav", "category": "browse",
         "url_route": "kdflow-reports"},
    ]
