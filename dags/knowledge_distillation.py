"""Knowledge distillation DAG: every box of the design diagram is a task.

Wiring only: each task calls one step of ``kdflow.pipeline`` (see include/kdflow/pipeline/registry.py),
cycles are task groups generated from the config, and tasks pass store pointers through XCom.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, TriggerRule, dag, task, task_group

from kdflow.config import load_config
from kdflow.kb import list_topics
from kdflow.pipeline.airflow_tasks import run_step_in_airflow, task_options
from kdflow.pipeline.params import params_schema
from kdflow.pipeline.registry import CYCLE_STEPS, FINAL_STEPS, SETUP_STEPS, StepSpec, box_names

CONFIG = load_config()
PIPELINE = CONFIG.pipeline


def _display(spec: StepSpec, cycle: int | None) -> str:
    names = box_names(cycle or 1, questions=PIPELINE.questions_per_cycle, pairs=PIPELINE.questions_per_cycle * (cycle or 1),
                      teacher=CONFIG.teacher.model, student=CONFIG.student.model)
    return spec.display_name(cycle, **names)


def _make_task(spec: StepSpec, cycle: int | None = None, **extra):
    @task(task_id=spec.id, task_display_name=_display(spec, cycle), **task_options(spec, CONFIG.airflow), **extra)
    def step(**inputs):
        return run_step_in_airflow(spec.id, cycle, inputs)

    return step


def _chain_steps(steps: tuple[StepSpec, ...], cycle: int | None, upstream=None, first_trigger_rule=None):
    """Call the steps in diagram order; each gets the XCom pointers of the steps it needs."""
    outputs = {}
    previous = upstream
    for index, spec in enumerate(steps):
        extra = {"trigger_rule": first_trigger_rule} if index == 0 and first_trigger_rule else {}
        call = _make_task(spec, cycle, **extra)(**{name: outputs[name] for name in spec.needs})
        if previous is not None:
            previous >> call
        outputs[spec.id] = previous = call
    return previous


@dag(
    dag_id="knowledge_distillation",
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
    last = _chain_steps(SETUP_STEPS, None)
    for cycle in range(1, PIPELINE.max_cycles + 1):

        @task_group(group_id=f"cycle_{cycle}", tooltip=f"Distillation cycle {cycle}")
        def cycle_group(cycle=cycle, upstream=last):
            return _chain_steps(CYCLE_STEPS, cycle, upstream)

        last = cycle_group()
    # Later cycles are skipped when a run asks for fewer; the final steps still run.
    _chain_steps(FINAL_STEPS, None, last, first_trigger_rule=TriggerRule.NONE_FAILED)


knowledge_distillation()
