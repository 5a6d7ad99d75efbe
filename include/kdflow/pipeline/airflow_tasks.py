"""The only Airflow-aware code of the library: how a step runs inside an Airflow task.

Imported at DAG-parse time, so it imports nothing heavy; the step itself imports its heavy
dependencies (torch, transformers, ragas) when the task runs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kdflow.config import AirflowConfig, KdflowConfig
from kdflow.pipeline.spec import StepSpec

TEACHER_RETRIES = 3
# A promotion announces the new champion as an Airflow Asset event through this alias (one asset per
# student model: kdflow://champion/<student>); the kdflow_export DAG is scheduled on the alias.
CHAMPION_ALIAS = "kdflow_champion"
ANNOUNCING_STEP = "save_pipeline_results"  # the step that decides the promotion


def task_options(spec: StepSpec, airflow_cfg: AirflowConfig) -> dict[str, Any]:
    """Pool, queue and retry policy by kind of step: the student on the GPU pool and queue and
    retried at most once; the teacher/judge with exponential backoff; the rest retried once."""
    if spec.uses_student:
        return {"pool": airflow_cfg.gpu_pool, "queue": airflow_cfg.gpu_queue, "retries": 1,
                "retry_delay": dt.timedelta(seconds=30)}
    options: dict[str, Any] = {"queue": airflow_cfg.default_queue}
    if spec.kind in ("teacher", "evaluation"):
        options.update(retries=TEACHER_RETRIES, retry_delay=dt.timedelta(seconds=20), retry_exponential_backoff=True,
                       max_retry_delay=dt.timedelta(minutes=10))
    else:
        options.update(retries=1, retry_delay=dt.timedelta(seconds=10))
    if spec.id == ANNOUNCING_STEP:
        from airflow.sdk import AssetAlias

        options["outlets"] = [AssetAlias(CHAMPION_ALIAS)]
    return options


def champion_asset_uri(student: str) -> str:
    """``kdflow://champion/<student>``, the student's name as its champion folder spells it."""
    from kdflow.pipeline.artifacts import champion_dir

    return "kdflow://" + champion_dir(student)


def announce_champion(outlet_events: Any, result: dict[str, Any], run_id: str) -> bool:
    """Add an event for the student's champion asset when ``result`` (the announcing step's) says a
    promotion happened; a refused promotion adds nothing, so nothing downstream runs."""
    summary = result.get("summary") or {}
    if not summary.get("promoted"):
        return False
    from airflow.sdk import Asset, AssetAlias

    student = summary["student"]
    extra = {"student": student, "run_id": run_id, "cycle": max(summary["cycles"]), "report": summary["report_html"]}
    outlet_events[AssetAlias(CHAMPION_ALIAS)].add(Asset(champion_asset_uri(student)), extra=extra)
    return True


def run_step_in_airflow(step_id: str, cycle: int | None, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run a step for the current task instance: run id and params from the Airflow context, the
    configuration validated once for the task."""
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from kdflow.config import ConfigError, load_config
    from kdflow.integrity import IntegrityError
    from kdflow.kb import KnowledgeBaseError
    from kdflow.pipeline import execute
    from kdflow.pipeline.params import params_to_overrides

    context = get_current_context()
    overrides = params_to_overrides(context["params"])
    try:
        config = load_config(overrides)
        mask_in_task_logs(config)
        result = execute(step_id, run_id=context["run_id"], overrides=overrides, cycle=cycle, inputs=inputs,
                         config=config)
    except (ConfigError, KnowledgeBaseError, IntegrityError) as exc:
        raise AirflowFailException(str(exc)) from None  # bad input: retrying cannot help
    if "skipped" in result:
        raise AirflowSkipException(result["skipped"])
    if step_id == ANNOUNCING_STEP:
        announce_champion(context["outlet_events"], result, context["run_id"])
    return result


def mask_in_task_logs(config: KdflowConfig) -> frozenset[str]:
    """Hand the run's secret values (store credentials, the teacher's API key) to Airflow's own log
    masker, in the task process and its supervisor: whatever prints them, kdflow or a library, the
    task log shows ``***``. kdflow masks what it writes itself (:func:`kdflow.config.mask_secrets`);
    this covers the lines it does not write."""
    from airflow.sdk.log import mask_secret

    secrets = config.secret_values()
    for value in secrets:
        mask_secret(value)
    return secrets


# -- the kdflow_export DAG -------------------------------------------------------------------------
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
            f"the export {record['name']} answers unlike the pipeline: key-fact recall "
            f"{result['key_fact_recall_export']} vs {result['key_fact_recall_pipeline']} on {result['questions']} "
            f"gold questions (tolerance {result['tolerance']})")
    return result
