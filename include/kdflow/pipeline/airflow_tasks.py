"""How a pipeline step runs inside an Airflow task (with kdflow.export.airflow_tasks, the only
Airflow-aware code of the library).

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
# A step waiting for its batch defers to kdflow.llm.batch_trigger.BatchTrigger and resumes in this method
# of its task (kdflow.pipeline.airflow_batch.StepOperator).
RESUME_METHOD = "resume_after_batch"


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
    from kdflow.llm.batch import BatchError
    from kdflow.llm.client import EndpointConfigError
    from kdflow.pipeline import run_step
    from kdflow.pipeline.batch_rounds import BatchWait
    from kdflow.pipeline.context import RunContext
    from kdflow.pipeline.params import params_to_overrides
    from kdflow.pipeline.registry import ALL_STEPS

    context = get_current_context()
    overrides = params_to_overrides(context["params"])
    try:
        config = load_config(overrides)
        mask_in_task_logs(config)
        ctx = RunContext.create(context["run_id"], overrides, config=config).for_step(ALL_STEPS[step_id], cycle,
                                                                                     inputs)
        result = run_step(ctx, scheduled=is_scheduled(context), wait_for_batch=False)
        report_lineage(ctx)
    except BatchWait as pending:
        defer_to_batch(context["task"], pending)
    except (ConfigError, KnowledgeBaseError, IntegrityError, BatchError, EndpointConfigError) as exc:
        # bad input, a batch past its limits, a refused model or parameter: retrying cannot help
        raise AirflowFailException(str(exc)) from None
    if "skipped" in result:
        raise AirflowSkipException(result["skipped"])
    if step_id == ANNOUNCING_STEP:
        announce_champion(context["outlet_events"], result, context["run_id"])
    return result


def is_scheduled(context: Any) -> bool:
    """Whether the schedule started this run (``teacher.batch: auto`` batches only those)."""
    run_type = getattr(context.get("dag_run"), "run_type", None)
    return getattr(run_type, "value", run_type) == "scheduled"


def defer_to_batch(task: Any, pending: Any) -> None:
    """Free the worker: the triggerer waits for the batch, then the task resumes in :data:`RESUME_METHOD`."""
    from kdflow.llm.batch_trigger import BatchTrigger

    if not hasattr(task, RESUME_METHOD):
        raise TypeError(f"task {task.task_id} cannot resume after a batch: make it with "
                        "kdflow.pipeline.airflow_batch.step_task")
    trigger = BatchTrigger(pending.batch_id, pending.base_url, pending.api_key_env, pending.poll_s)
    task.defer(trigger=trigger, method_name=RESUME_METHOD)


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


def report_lineage(ctx: Any) -> int:
    """Hand the store objects the step read and published (:func:`kdflow.tracking.lineage.step_datasets`) to
    Airflow's hook lineage collector: the OpenLineage provider, when a transport is configured, reports them
    as the task's input and output datasets (without one the collector is a no-op). Never fails the task."""
    import logging

    try:
        from airflow.sdk.lineage import get_hook_lineage_collector

        from kdflow.tracking.lineage import step_datasets

        inputs, outputs = step_datasets(ctx)
        collector = get_hook_lineage_collector()
        for uri in inputs:
            collector.add_input_asset(ctx.store.root, uri=uri)
        for uri in outputs:
            collector.add_output_asset(ctx.store.root, uri=uri)
        return len(inputs) + len(outputs)
    except Exception:  # noqa: BLE001 - lineage is advisory
        logging.getLogger(__name__).warning("could not report the lineage of this task", exc_info=True)
        return 0
