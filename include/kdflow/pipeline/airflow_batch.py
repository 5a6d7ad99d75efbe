"""The distillation DAG's task type: a TaskFlow task that can wait for a batch in the triggerer.

A plain ``@task`` cannot be resumed after deferring (the runner calls the method the task deferred to,
with the trigger's event, and a TaskFlow task has none). :func:`step_task` makes the same task with one
method more, :meth:`StepOperator.resume_after_batch`, which runs the step function again: the step then
finds its batch ended, reads the answers and goes on (:mod:`kdflow.pipeline.batch_rounds`). Imported by
the DAG file only (the library's CLI never imports Airflow).
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.sdk.bases.decorator import task_decorator_factory

from kdflow.pipeline.airflow_tasks import RESUME_METHOD


class StepOperator(_PythonDecoratedOperator):
    """``@task`` plus the method a step that waited for a batch resumes in."""

    custom_operator_name = "@step_task"

    def resume_after_batch(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        self.log.info("batch %s ended (%s): running the step again", (event or {}).get("batch_id"),
                      (event or {}).get("status"))
        return self.execute(context)


assert StepOperator.resume_after_batch.__name__ == RESUME_METHOD


def step_task(**kwargs: Any) -> Any:
    """``@step_task(task_id=..., ...)``: like ``@task(...)``, for the tasks that run a pipeline step."""
    return task_decorator_factory(decorated_operator_class=StepOperator, **kwargs)
