"""Knowledge distillation DAG: every box of the design diagram is a task.

Wiring only: each task runs one step of ``kdflow.pipeline`` (see include/kdflow/pipeline/registry.py;
a teacher or judge task may wait for its OpenAI batch in the triggerer, see kdflow.pipeline.airflow_batch),
cycles are task groups generated from the config. A task's upstream edges are the diagram's order
(one line through every box) and one edge per input its registry entry declares: from the step whose
pointer it reads (carried by XCom) or from the step that publishes a checkpoint it reads.

Beyond the diagram: a review task after "Prepare Training Dataset" of each cycle and one before "Save
Complete Pipeline Results" (include/kdflow/pipeline/review_tasks.py), on the same line; they wait for a
person only when the run turns ``review.dataset`` / ``review.promotion`` on.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, TriggerRule, dag, task_group

from kdflow.config import load_config
from kdflow.kb import list_topics
from kdflow.pipeline.airflow_batch import step_task
from kdflow.pipeline.airflow_tasks import run_step_in_airflow, task_options
from kdflow.pipeline.params import params_schema
from kdflow.pipeline.registry import CYCLE_STEPS, FINAL_STEPS, SETUP_STEPS, declared_upstream, display_name
from kdflow.pipeline.review_tasks import REVIEW_AFTER, review_after, review_task_id
from kdflow.pipeline.spec import DAG_ID, StepSpec

CONFIG = load_config()
PIPELINE = CONFIG.pipeline


def _make_task(spec: StepSpec, cycle: int | None = None, **extra):
    @step_task(task_id=spec.id, task_display_name=display_name(spec, CONFIG, cycle),
               **task_options(spec, CONFIG.airflow), **extra)
    def step(**inputs):
        return run_step_in_airflow(spec.id, cycle, inputs)

    return step


def _add_steps(steps: tuple[StepSpec, ...], cycle: int | None, tasks: dict, upstream=None, trigger_rule=None):
    """Add the steps in diagram order: each gets the XCom pointers of the steps it reads and an edge
    from the step before it and from every producer of a checkpoint it reads."""
    outputs = {}
    previous = upstream
    for spec in steps:
        extra = {"trigger_rule": trigger_rule} if trigger_rule else {}
        call = _make_task(spec, cycle, **extra)(**{name: outputs[name] for name in spec.step_inputs})
        upstream_steps = [tasks[key] for key in declared_upstream(spec, cycle, PIPELINE.max_cycles) if key in tasks]
        for producer in [*upstream_steps, *([previous] if previous is not None else [])]:
            producer >> call
        outputs[spec.id] = tasks[(cycle, spec.id)] = previous = call
        review = review_after(spec.id, cycle, CONFIG.airflow, **extra)  # beyond the diagram: see review_tasks
        if review is not None:
            call >> review
            tasks[(cycle, review_task_id(REVIEW_AFTER[spec.id]))] = previous = review
    return previous


@dag(
    dag_id=DAG_ID,
    dag_display_name="Knowledge distillation: teacher -> student",
    schedule=CONFIG.airflow.schedule,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["kdflow", "distillation", "llm"],
    params={name: Param(**schema) for name, schema in params_schema(CONFIG, list_topics(
        CONFIG.knowledge_base.path, CONFIG.knowledge_base.topic_map) or PIPELINE.topics).items()},
    doc_md=__doc__,
)
def knowledge_distillation():
    tasks = {}  # (cycle or None, step id) -> task
    last = _add_steps(SETUP_STEPS, None, tasks)
    for cycle in range(1, PIPELINE.max_cycles + 1):

        @task_group(group_id=f"cycle_{cycle}", tooltip=f"Distillation cycle {cycle}")
        def cycle_group(cycle=cycle, upstream=last):
            return _add_steps(CYCLE_STEPS, cycle, tasks, upstream)

        last = cycle_group()
    # Later cycles are skipped when a run asks for fewer; the final steps still run (and read the cycles that ran).
    _add_steps(FINAL_STEPS, None, tasks, last, trigger_rule=TriggerRule.NONE_FAILED)


knowledge_distillation()
