"""DAG integrity: the DAG folder imports cleanly, fast, and has the diagram's shape."""

import time
from pathlib import Path

import pytest

from kdflow.config import load_config
from kdflow.pipeline.params import params_to_overrides
from kdflow.pipeline.registry import CYCLE_STEPS, FINAL_STEPS, SETUP_STEPS

DAGS = Path(__file__).resolve().parents[1] / "dags"
CONFIG = load_config()


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["knowledge_distillation"]


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert list(dagbag.dag_ids) == ["knowledge_distillation"]


def test_parse_time_well_under_a_second(dagbag):
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    DagBag(dag_folder=str(DAGS))
    assert time.perf_counter() - started < 1.0


def test_parsing_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, importlib.util;"
        f"spec = importlib.util.spec_from_file_location('kd', {str(DAGS / 'knowledge_distillation.py')!r});"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "heavy = [n for n in ('torch', 'transformers', 'ragas', 'peft', 'trl', 'sentence_transformers', 'openai', 'matplotlib')"
        " if n in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_every_box_of_the_diagram_is_a_task_in_order(dag):
    expected = [s.id for s in SETUP_STEPS]
    for n in range(1, CONFIG.pipeline.max_cycles + 1):
        expected += [f"cycle_{n}.{s.id}" for s in CYCLE_STEPS]
    expected += [s.id for s in FINAL_STEPS]
    assert sorted(dag.task_ids) == sorted(expected)
    # a single line, in diagram order
    for upstream, downstream in zip(expected, expected[1:], strict=False):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)


def test_display_names_are_the_box_texts(dag):
    names = {t.task_id: t.task_display_name for t in dag.tasks}
    assert names["cycle_1.generate_questions"] == "Generate 3 Questions using gpt-4o-mini"
    assert names["cycle_2.generate_questions"] == "Generate 3 NEW Questions using gpt-4o-mini"
    assert names["cycle_2.prepare_training_dataset"] == "Prepare Training Dataset 6 Q&A Pairs Total"
    assert names["cycle_1.cycle_start"] == "CYCLE 1 START"
    assert names["show_sample_qa_pairs"] == "Show Sample Q&A Pairs from Both Cycles"


def test_student_tasks_use_the_gpu_pool_and_queue(dag):
    for t in dag.tasks:
        step = t.task_id.split(".")[-1]
        spec = next(s for s in (*SETUP_STEPS, *CYCLE_STEPS, *FINAL_STEPS) if s.id == step)
        if spec.uses_student:
            assert (t.pool, t.queue, t.retries) == ("gpu", "gpu", 1), t.task_id
        else:
            assert t.pool != "gpu" and t.queue == "default", t.task_id
    student = {t.task_id.split(".")[-1] for t in dag.tasks if t.pool == "gpu"}
    assert student == {"load_student_model", "generate_baseline_answers", "finetune_student", "load_finetuned_model",
                       "generate_finetuned_answers"}


def test_teacher_tasks_back_off_exponentially(dag):
    task = dag.get_task("cycle_1.generate_questions")
    assert task.retries >= 3 and task.retry_exponential_backoff


def test_schedule_and_run_policy(dag):
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert dag.timetable.expression == "0 2 * * *"


def test_params_schema(dag):
    params = dag.params
    assert params["topics"] == ["pods", "services", "storage"]
    assert params.get_param("topics").schema["items"]["enum"] == ["pods", "services", "storage"]
    assert params.get_param("cycles").schema["maximum"] == CONFIG.pipeline.max_cycles
    from airflow.sdk.exceptions import ParamValidationError

    for name, bad in [("cycles", 0), ("cycles", CONFIG.pipeline.max_cycles + 1), ("questions_per_cycle", -1),
                      ("topics", ["networking"]), ("topics", []), ("cycles", "two")]:
        with pytest.raises(ParamValidationError):
            params.get_param(name).resolve(bad)


def test_params_map_onto_the_config():
    overrides = params_to_overrides({"topics": ["pods"], "cycles": 1, "teacher_base_url": None, "seed": 7})
    assert overrides == {"pipeline": {"topics": ["pods"], "cycles": 1}, "seed": 7}
    with pytest.raises(ValueError, match="unknown param"):
        params_to_overrides({"nope": 1})
