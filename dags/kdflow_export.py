"""Export the new champion: scheduled on the champion Asset that a promotion announces.

Wiring only: when ``knowledge_distillation`` promotes a student, its results task adds an event to
``kdflow://champion/<student>`` through the ``kdflow_champion`` alias; this DAG then merges the
champion's adapter, converts it to GGUF, publishes both with a model card under ``models/`` in the
store (``kdflow.export``), and checks that the GGUF answers gold questions like the pipeline measured.
A refused promotion announces nothing, so nothing runs. ``python -m kdflow export`` does the same by hand.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import AssetAlias, dag, task

from kdflow.export.airflow_tasks import export_announced_champion, smoke_test_export
from kdflow.pipeline.airflow_tasks import CHAMPION_ALIAS


@dag(
    dag_id="kdflow_export",
    dag_display_name="Export the champion student (HF + GGUF)",
    schedule=[AssetAlias(CHAMPION_ALIAS)],
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["kdflow", "export"],
    doc_md=__doc__,
)
def kdflow_export():
    @task(task_display_name="Merge, convert and publish the champion", retries=1)
    def export_champion(*, triggering_asset_events=None):
        return export_announced_champion(triggering_asset_events)

    @task(task_display_name="Smoke test: the GGUF answers gold questions")
    def smoke_test(record):
        return smoke_test_export(record)

    smoke_test(export_champion())


kdflow_export()
