"""DAG integrity: the DAG folder imports cleanly, fast, and has the diagram's shape: every box of
the user's design (docs/pipeline-diagram.md, main flowchart) is a task, in the diagram's order."""

import re
import time
from pathlib import Path

import pytest

from kdflow.config import load_config
from kdflow.pipeline.params import params_to_overrides
from kdflow.pipeline.registry import CYCLE_STEPS, FINAL_STEPS, SETUP_STEPS, box_names, declared_upstream
from kdflow.pipeline.spec import DAG_ID, StepSpec

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
DIAGRAM = REPO / "docs" / "pipeline-diagram.md"
CONFIG = load_config()
NAMES = box_names(CONFIG, 1)
# The diagram names the production models, its knowledge base and topics and one metric; the DAG's
# display names name the configured ones.
MODEL_NAMES = {"GPT-4o-mini": NAMES["teacher"], "Phi-2": NAMES["student"], "Kubernetes v1.28": NAMES["kb"],
               "Pods, Services, Storage": NAMES["topics"], "Relevancy": NAMES["metric"]}
EDGE = re.compile(r"^\s*(\w+)(?:\[([^\]]*)\])?\s*-->\s*(\w+)(?:\[([^\]]*)\])?\s*$")


def diagram_boxes(markdown: str) -> list[str]:
    """Box texts of the first (main) mermaid flowchart, in the order its flow first names them."""
    block = re.search(r"```mermaid\n(.*?)```", markdown, re.S).group(1)
    texts: dict[str, str | None] = {}
    for line in block.splitlines():
        if "-->" not in line:
            continue
        match = EDGE.match(line)
        assert match, f"unparsed edge in the diagram: {line.strip()!r}"
        for node, text in (match.group(1, 2), match.group(3, 4)):
            if text is not None:
                texts[node] = text
            texts.setdefault(node, None)
    undefined = [node for node, text in texts.items() if text is None]
    assert not undefined, f"boxes without text: {undefined}"
    return list(texts.values())


def normalise(text: str) -> str:
    """Box text as words: emoji (and their variation selectors) dropped, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s:&.,/()+-]", " ", text).split())


def as_display_name(box: str) -> str:
    for diagram_name, configured in MODEL_NAMES.items():
        box = box.replace(diagram_name, configured)
    return normalise(box)


def in_flow_order(dag) -> list:
    """The tasks along the DAG's single line (each has one more ancestor than the one before)."""
    return sorted(dag.tasks, key=lambda t: len(t.get_flat_relative_ids(upstream=True)))


def missing_boxes(boxes: list[str], names: list[str]) -> list[str]:
    """Boxes that are not display names of tasks following the previous box's task."""
    missing, position = [], 0
    for box in boxes:
        if box in names[position:]:
            position = names.index(box, position) + 1
        else:
            missing.append(box if box not in names else f"{box} (out of order)")
    return missing


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags[DAG_ID]


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dag_ids) == ["kdflow_export", DAG_ID]


def test_the_export_dag_is_scheduled_on_the_champion_alias_the_results_task_announces(dagbag):
    """Issue #18: a promotion's results task adds its champion event through the alias; kdflow_export
    runs on that alias (export, then the GGUF smoke test), and on nothing else."""
    from airflow.sdk import AssetAlias

    from kdflow.pipeline.airflow_tasks import ANNOUNCING_STEP, CHAMPION_ALIAS

    export = dagbag.dags["kdflow_export"]
    assert type(export.timetable).__name__ == "AssetTriggeredTimetable"
    assert list(export.timetable.asset_condition.objects) == [AssetAlias(CHAMPION_ALIAS)]
    assert [t.task_id for t in export.topological_sort()] == ["export_champion", "smoke_test"]
    assert dagbag.dags[DAG_ID].get_task(ANNOUNCING_STEP).outlets == [AssetAlias(CHAMPION_ALIAS)]
    others = [t.task_id for t in dagbag.dags[DAG_ID].tasks if t.outlets and t.task_id != ANNOUNCING_STEP]
    assert others == []


def test_parse_time_well_under_a_second(dagbag):
    from airflow.dag_processing.dagbag import DagBag

    started = time.perf_counter()
    DagBag(dag_folder=str(DAGS))
    assert time.perf_counter() - started < 1.0


def test_parsing_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, importlib.util;spec = importlib.util.spec_from_file_location('kd', "
        f"{str(DAGS / 'knowledge_distillation.py')!r});m = importlib.util.module_from_spec(spec); "
        "spec.loader.exec_module(m);heavy = [n for n in ('torch', 'transformers', 'ragas', 'peft', 'trl', "
        "'sentence_transformers', 'openai', 'matplotlib') if n in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_every_box_of_the_diagram_is_a_task_in_the_diagram_order(dag):
    boxes = [as_display_name(box) for box in diagram_boxes(DIAGRAM.read_text())]
    assert boxes[0] == "User Clicks Start Pipeline" and boxes[-1] == "Show Sample Q&A Pairs from Both Cycles"
    assert "CYCLE 2 START" in boxes and f"Load Fine-tuned {NAMES['student']} from Cycle 1" in boxes
    names = [normalise(t.task_display_name) for t in in_flow_order(dag)]
    assert missing_boxes(boxes, names) == []


def test_a_step_removed_from_the_registry_is_a_missing_box(monkeypatch):
    """The diagram, not the registry, is the reference: a DAG built without a step fails the check."""
    from airflow.dag_processing.dagbag import DagBag

    from kdflow.pipeline import registry

    monkeypatch.setattr(registry, "FINAL_STEPS", tuple(s for s in FINAL_STEPS if s.id != "show_performance_comparison"))
    dag = DagBag(dag_folder=str(DAGS)).dags[DAG_ID]
    boxes = [as_display_name(box) for box in diagram_boxes(DIAGRAM.read_text())]
    assert missing_boxes(boxes,
                         [normalise(t.task_display_name)
                          for t in in_flow_order(dag)]) == ["Show Performance Comparison"]


def line() -> list[tuple[int | None, str, StepSpec | None]]:
    """``(cycle, task id within its cycle, registry step or None)`` along the DAG's line: the registry's
    steps in diagram order, each review task (beyond the diagram, no StepSpec) right after its step."""
    from kdflow.pipeline.review_tasks import REVIEW_AFTER, review_task_id

    order = []
    for cycle, steps in [(None, SETUP_STEPS), *((n, CYCLE_STEPS) for n in range(1, CONFIG.pipeline.max_cycles + 1)),
                         (None, FINAL_STEPS)]:
        for spec in steps:
            order.append((cycle, spec.id, spec))
            if spec.id in REVIEW_AFTER:
                order.append((cycle, review_task_id(REVIEW_AFTER[spec.id]), None))
    return order


def task_id(cycle: int | None, step_id: str) -> str:
    return f"cycle_{cycle}.{step_id}" if cycle else step_id


def test_every_registry_step_is_a_task_on_a_single_line(dag):
    expected = [task_id(cycle, step_id) for cycle, step_id, _ in line()]
    assert sorted(dag.task_ids) == sorted(expected)
    reviews = [t for t in expected if t.rsplit(".", 1)[-1].startswith("review_")]
    assert reviews == [f"cycle_{n}.review_dataset" for n in range(1, CONFIG.pipeline.max_cycles + 1)] + [
        "review_promotion"]
    # a single line, in diagram order
    for upstream, downstream in zip(expected, expected[1:], strict=False):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)


def test_display_names_are_the_box_texts(dag):
    names = {t.task_id: t.task_display_name for t in dag.tasks}
    # the embedded teacher and student run: the boxes name the packaged model, not teacher.model's label
    assert names["cycle_1.generate_questions"] == "Generate 3 Questions using SmolLM2-135M-Instruct.Q4_1"
    assert names["cycle_2.generate_questions"] == "Generate 3 NEW Questions using SmolLM2-135M-Instruct.Q4_1"
    assert names["load_knowledge_base"] == "Load Kubernetes v1.28 Knowledge Base"
    assert names["select_topics"] == "Select Topics: Pods, Services, Storage"
    assert names["read_knowledge_base"] == "SmolLM2-135M-Instruct.Q4_1 Reads the Kubernetes v1.28 Knowledge Base"
    assert names["cycle_1.calculate_baseline_score"] == "Calculate Baseline Key Fact Recall Score"
    assert names["cycle_2.prepare_training_dataset"] == "Prepare Training Dataset 6 Q&A Pairs Total"
    assert names["cycle_1.cycle_start"] == "CYCLE 1 START"
    assert names["show_sample_qa_pairs"] == "Show Sample Q&A Pairs from Both Cycles"


def test_box_texts_follow_the_configuration():
    """Another knowledge base, topics, models and promotion metric show in the boxes, not the demo's."""
    from kdflow.pipeline.registry import ALL_STEPS, display_name

    config = load_config({"knowledge_base": {"name": "Acme Handbook"}, "pipeline": {"topics": ["billing", "pods"]},
                          "teacher": {"provider": "openai", "model": "qwen2.5-7b"}, "student": {"model": "acme/tiny"},
                          "promotion": {"metric": "rouge_l"}})
    texts = {step: display_name(ALL_STEPS[step], config, 1) for step in
             ("load_knowledge_base", "select_topics", "generate_questions", "finetune_student",
              "calculate_baseline_score")}
    assert texts == {"load_knowledge_base": "Load Acme Handbook Knowledge Base",
                     "select_topics": "Select Topics: Billing, Pods",
                     "generate_questions": "Generate 3 Questions using qwen2.5-7b",
                     "finetune_student": "Fine-tune acme/tiny with QLoRA",
                     "calculate_baseline_score": "Calculate Baseline Rouge L Score"}


def test_dag_edges_are_the_diagram_order_and_the_declared_inputs(dag):
    """Every edge is either the next box of the diagram or a declared input (a pointer read through XCom,
    or the publisher of a checkpoint read), and every declared input has its edge."""
    order = line()
    expected = {(task_id(c, s), task_id(d, t)) for (c, s, _), (d, t, _) in zip(order, order[1:], strict=False)}
    for cycle, step_id, spec in order:
        if spec is not None:  # a review task declares nothing: its edges are the line's
            expected |= {(task_id(*up), task_id(cycle, step_id))
                         for up in declared_upstream(spec, cycle, CONFIG.pipeline.max_cycles)}
    actual = {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids}
    assert actual == expected
    # what the diagram's line alone does not say: the previous adapter, the cycles a report reads
    assert dag.get_task("cycle_2.cycle_start").upstream_task_ids == {"cycle_1.save_cycle_results",
                                                                     "cycle_1.save_adapter", "read_knowledge_base"}
    assert {"cycle_1.finetuning_complete", "cycle_1.save_finetuned_evaluation"} <= dag.get_task(
        "cycle_1.compare_performance").upstream_task_ids
    assert "cycle_3.save_cycle_results" in dag.get_task("compare_all_cycles").upstream_task_ids


def test_review_tasks_are_airflows_hitl_operators_beyond_the_diagram(dag):
    """Issue 21: after each cycle's dataset step and before the results (which decide the promotion), on the
    default queue without retries (a retry would ask again); the fine-tuning waits for the dataset review,
    the results for the promotion review, which runs like the final steps when later cycles were skipped."""
    from airflow.providers.standard.operators.hitl import HITLOperator
    from airflow.sdk import TriggerRule

    for n in range(1, CONFIG.pipeline.max_cycles + 1):
        review = dag.get_task(f"cycle_{n}.review_dataset")
        assert isinstance(review, HITLOperator) and (review.queue, review.retries) == ("default", 0)
        assert review.upstream_task_ids == {f"cycle_{n}.prepare_training_dataset"}
        assert f"cycle_{n}.review_dataset" in dag.get_task(f"cycle_{n}.finetune_student").upstream_task_ids
        assert review.task_display_name == f"Review Cycle {n} Training Data (review.dataset)"
    promotion = dag.get_task("review_promotion")
    assert isinstance(promotion, HITLOperator) and promotion.trigger_rule == TriggerRule.NONE_FAILED
    assert promotion.upstream_task_ids == {"calculate_overall_improvement"}
    assert "review_promotion" in dag.get_task("save_pipeline_results").upstream_task_ids


def test_student_tasks_use_the_gpu_pool_and_queue(dag):
    for t in dag.tasks:
        step = t.task_id.split(".")[-1]
        spec = next((s for s in (*SETUP_STEPS, *CYCLE_STEPS, *FINAL_STEPS) if s.id == step), None)
        if spec is not None and spec.uses_student:
            assert (t.pool, t.queue, t.retries) == ("gpu", "gpu", 1), t.task_id
        else:
            assert t.pool != "gpu" and t.queue == "default", t.task_id
    student = {t.task_id.split(".")[-1] for t in dag.tasks if t.pool == "gpu"}
    assert student == {"read_knowledge_base", "load_student_model", "generate_baseline_answers", "finetune_student",
                       "load_finetuned_model", "generate_finetuned_answers"}


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
    # review is off by default: a scheduled run waits for nobody (issue 21)
    assert (params["review_dataset"], params["review_promotion"], params["review_timeout"]) == (False, False, "1d")
    # the tests' environment turns reading off (tests/conftest.py); the form offers the three settings
    assert params["read_knowledge_base"] == "false"
    assert params.get_param("read_knowledge_base").schema["enum"] == ["auto", "true", "false"]
    assert params["training_pairs"] == "all" and params.get_param("training_pairs").schema["enum"] == ["all", "new"]
    from airflow.sdk.exceptions import ParamValidationError

    for name, bad in [("cycles", 0), ("cycles", CONFIG.pipeline.max_cycles + 1), ("questions_per_cycle", -1),
                      ("topics", ["networking"]), ("topics", []), ("cycles", "two"),
                      ("read_knowledge_base", "sometimes"), ("training_pairs", "some")]:
        with pytest.raises(ParamValidationError):
            params.get_param(name).resolve(bad)


def test_params_map_onto_the_config():
    overrides = params_to_overrides({"topics": ["pods"], "cycles": 1, "teacher_base_url": None, "seed": 7})
    assert overrides == {"pipeline": {"topics": ["pods"], "cycles": 1}, "seed": 7}
    assert params_to_overrides({"review_dataset": True, "review_timeout": "2h"}) == {
        "review": {"dataset": True, "timeout": "2h"}}
    with pytest.raises(ValueError, match="unknown param"):
        params_to_overrides({"nope": 1})
    # a nested setting: whether the student reads the knowledge base first, from the trigger form's choice
    overrides = params_to_overrides({"read_knowledge_base": "false", "student_model": "embedded"})
    assert overrides == {"student": {"model": "embedded", "kb_reading": {"enabled": "false"}}}
    assert load_config(overrides).student.kb_reading.enabled is False
    assert load_config(params_to_overrides({"read_knowledge_base": "auto"})).student.kb_reading.enabled == "auto"
    assert params_to_overrides({"training_pairs": "new"}) == {"pipeline": {"training_pairs": "new"}}


def test_every_step_task_can_wait_for_a_batch_in_the_triggerer(dagbag):
    """A teacher or judge task defers to the BatchTrigger and resumes in resume_after_batch (issue #22); the
    review tasks (Airflow's HITL operators, issue #21) run no step and ask no teacher."""
    from airflow.providers.standard.operators.hitl import HITLOperator

    from kdflow.pipeline.airflow_tasks import RESUME_METHOD
    from kdflow.pipeline.registry import ALL_STEPS

    tasks = dagbag.dags[DAG_ID].tasks
    steps = [t for t in tasks if t.task_id.rsplit(".", 1)[-1] in ALL_STEPS]
    assert all(isinstance(t, HITLOperator) for t in tasks if t not in steps)
    assert [t.task_id for t in steps if not callable(getattr(t, RESUME_METHOD, None))] == []
