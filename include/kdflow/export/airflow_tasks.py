"""The Airflow side of the ``kdflow_export`` DAG (``dags/kdflow_export.py``): export the champion a
promotion announced, then smoke-test its GGUF. Imported at DAG-parse time, so it imports nothing
heavy; the task functions import what they run."""

from __future__ import annotations

from typing import Any

from kdflow.pipeline.airflow_tasks import mask_in_task_logs


def export_announced_champion(triggering_asset_events: Any) -> dict[str, Any]:
    """Export the champion of the student the triggering event names (the current champion: a newer
    promotion since the event is exported instead, and the record says which). Returns the export's
    small record for XCom."""
    from kdflow.config import load_config
    from kdflow.export.publish import export_model
    from kdflow.export.source import champion_source
    from kdflow.pipeline.context import RunContext
    from kdflow.store import ArtifactStore

    extras = [event.extra for events in (triggering_asset_events or {}).values() for event in events]
    student = next((extra["student"] for extra in reversed(extras) if extra.get("student")), None)
    config = load_config({"student": {"model": student}} if student else {})
    mask_in_task_logs(config)
    ctx = RunContext(config=config, store=ArtifactStore.from_config(config), run_id="export")
    record = export_model(ctx, champion_source(ctx))
    keep = ("name", "version", "student", "run_id", "cycle", "url", "folder", "errors", "sizes_mb", "seconds")
    return {key: record[key] for key in keep}


def smoke_test_export(record: dict[str, Any]) -> dict[str, Any]:
    """Answer gold questions with the exported GGUF and compare with the run's recorded answers
    (:func:`kdflow.export.smoke.smoke_test`); fails the task when they differ beyond the tolerance,
    skips it when the export has no GGUF."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from kdflow.config import load_config
    from kdflow.export.gguf import ExportError
    from kdflow.export.publish import DEFAULT_EXPORT_DIR
    from kdflow.export.serve import gguf_of
    from kdflow.export.smoke import smoke_test
    from kdflow.export.source import run_source
    from kdflow.pipeline.context import RunContext
    from kdflow.store import ArtifactStore

    config = load_config({"student": {"model": record["student"]}})
    ctx = RunContext(config=config, store=ArtifactStore.from_config(config), run_id="export")
    try:
        gguf = gguf_of(ctx, record, DEFAULT_EXPORT_DIR / "smoke")
    except ExportError as exc:
        raise AirflowSkipException(str(exc)) from None
    source = run_source(ctx, record["run_id"])
    result = smoke_test(source, gguf, max_new_tokens=config.evaluation.gold_max_new_tokens)
    if not result["passed"]:
        raise AirflowFailException(
            f"the export {record['name']} answers unlike the pipeline on {result['questions']} gold questions: "
            f"key-fact recall {result['key_fact_recall_export']} vs {result['key_fact_recall_pipeline']} (tolerance "
            f"{result['tolerance']}), wording agreement {result['prefix_agreement']} (at least "
            f"{result['min_prefix_agreement']})")
    return result
