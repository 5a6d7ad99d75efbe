"""Every box of the design diagram (docs/pipeline-diagram.md, main flow) as a step, in diagram order.

The DAG and the CLI runner both walk these tables, so the diagram is written down once. Each row
names the function it runs, every input the step reads (see :mod:`kdflow.pipeline.spec`) and the
checkpoints it publishes. The DAG file imports this module at parse time: the step modules import
their heavy libraries (torch, transformers, ragas) inside the functions, when a task runs.
"""

from __future__ import annotations

from kdflow.config import KdflowConfig
from kdflow.pipeline import checkpoint_steps as save
from kdflow.pipeline import eval_steps as ev
from kdflow.pipeline import final_steps as fin
from kdflow.pipeline import reading_steps as reading
from kdflow.pipeline import setup_steps as setup
from kdflow.pipeline import student_steps as stu
from kdflow.pipeline import teacher_steps as tea
from kdflow.pipeline.spec import StepSpec, earlier, every_cycle, previous, run, step, this

S = StepSpec
HELD_OUT = (run("held_out"), run("gold"))  # read by every step that handles the run's questions
BASE = run("student_base")  # the model every student step loads, and the name its adapters and champion belong to

SETUP_STEPS: tuple[StepSpec, ...] = (
    S("start_pipeline", "User Clicks Start Pipeline", "setup", setup.start_pipeline, produces=("run",)),
    S("load_configuration", "Load Configuration", "setup", setup.load_configuration, produces=("config",)),
    S("load_knowledge_base", "Load {kb} Knowledge Base", "setup", setup.load_knowledge_base,
      produces=("knowledge_base",)),
    S("select_topics", "Select Topics: {topics}", "setup", setup.select_topics, produces=("topics",)),
    # beyond the diagram: every weight of the student trained on the topics' passages, once per student and KB
    S("read_knowledge_base", "{student} Reads the {kb} Knowledge Base", "student", reading.read_knowledge_base,
      produces=("student_base",)),
    S("prepare_held_out_questions", "Prepare Held-out Questions", "teacher", tea.prepare_held_out_questions,
      produces=("held_out", "gold", "gold_ceiling")),
)

CYCLE_STEPS: tuple[StepSpec, ...] = (
    S("cycle_start", "CYCLE {n} START", "setup", setup.cycle_start, (previous("adapter"), BASE), ("start",)),
    S("generate_questions", "Generate {q} Questions using {teacher}", "teacher", tea.generate_questions,
      (this("start"), earlier("questions")), display_later="Generate {q} NEW Questions using {teacher}"),
    S("save_questions", "Save Questions Checkpoint", "checkpoint", save.save_questions, (step("generate_questions"),),
      ("questions",), display_later="Save Cycle {n} Questions"),
    S("load_student_model", "Load {student} Model 4-bit QLoRA", "student", stu.load_student_model,
      (this("start"), BASE), ("baseline_model",), display_later="Load Fine-tuned {student} from Cycle {prev}"),
    S("generate_baseline_answers", "Generate Baseline Answers for {q} Questions", "student",
      stu.generate_baseline_answers, (this("start"), this("questions"), *HELD_OUT, BASE),
      display_later="Generate Baseline Answers for {q} NEW Questions"),
    S("save_baseline_answers", "Save Baseline Answers", "checkpoint", save.save_baseline_answers,
      (step("generate_baseline_answers"),), ("baseline_answers",), display_later="Save Cycle {n} Baseline Answers"),
    S("generate_reference_answers", "Generate Reference Answers using {teacher}", "teacher",
      tea.generate_reference_answers, (this("questions"), run("held_out")),
      display_later="Generate Reference Answers for NEW Questions"),
    S("save_reference_answers", "Save Reference Answers", "checkpoint", save.save_reference_answers,
      (step("generate_reference_answers"),), ("references",), display_later="Save Cycle {n} Reference Answers"),
    S("evaluate_baseline", "Evaluate Baseline Answers using RAGAS", "evaluation", ev.evaluate_baseline,
      (this("questions"), this("references"), this("baseline_answers"), *HELD_OUT),
      display_later="Evaluate Cycle {n} Baseline Answers"),
    S("calculate_baseline_score", "Calculate Baseline {metric} Score", "evaluation", ev.calculate_baseline_score,
      (step("evaluate_baseline"),), display_later="Calculate Cycle {n} Baseline Score"),
    S("save_baseline_evaluation", "Save Baseline Evaluation", "checkpoint", save.save_baseline_evaluation,
      (step("evaluate_baseline"), step("calculate_baseline_score")), ("baseline_scores", "baseline_aggregate"),
      display_later="Save Cycle {n} Baseline Evaluation"),
    S("prepare_training_dataset", "Prepare Training Dataset {pairs} Q&A Pairs", "setup", stu.prepare_training_dataset,
      (this("questions"), earlier("questions"), this("references"), earlier("references"), *HELD_OUT),
      ("dataset", "hf_dataset"),
      display_later="Prepare Training Dataset {pairs} Q&A Pairs Total"),
    S("finetune_student", "Fine-tune {student} with QLoRA", "student", stu.finetune_student,
      (this("hf_dataset"), this("start"), BASE), display_later="Fine-tune {student} with QLoRA Round {n}"),
    S("save_adapter", "Save Fine-tuned Adapter", "checkpoint", save.save_adapter, (step("finetune_student"),),
      ("adapter",), display_later="Save Cycle {n} Fine-tuned Adapter"),
    S("finetuning_complete", "Fine-tuning Complete", "checkpoint", save.finetuning_complete, (step("save_adapter"),),
      ("training",), display_later="Cycle {n} Fine-tuning Complete"),
    S("load_finetuned_model", "Load Fine-tuned {student} Model", "student", stu.load_finetuned_model,
      (this("adapter"), BASE), ("finetuned_model",), display_later="Load Cycle {n} Fine-tuned {student}"),
    S("generate_finetuned_answers", "Generate Fine-tuned Answers for {q} Questions", "student",
      stu.generate_finetuned_answers, (this("adapter"), this("questions"), *HELD_OUT, BASE),
      display_later="Generate Cycle {n} Fine-tuned Answers"),
    S("save_finetuned_answers", "Save Fine-tuned Answers", "checkpoint", save.save_finetuned_answers,
      (step("generate_finetuned_answers"),), ("finetuned_answers",), display_later="Save Cycle {n} Fine-tuned Answers"),
    S("evaluate_finetuned", "Evaluate Fine-tuned Answers using RAGAS", "evaluation", ev.evaluate_finetuned,
      (this("questions"), this("references"), this("finetuned_answers"), *HELD_OUT),
      display_later="Evaluate Cycle {n} Fine-tuned Answers"),
    S("calculate_finetuned_score", "Calculate Fine-tuned {metric} Score", "evaluation", ev.calculate_finetuned_score,
      (step("evaluate_finetuned"),), display_later="Calculate Cycle {n} Fine-tuned Score"),
    S("save_finetuned_evaluation", "Save Fine-tuned Evaluation", "checkpoint", save.save_finetuned_evaluation,
      (step("evaluate_finetuned"), step("calculate_finetuned_score")), ("finetuned_scores", "finetuned_aggregate"),
      display_later="Save Cycle {n} Fine-tuned Evaluation"),
    S("compare_performance", "Compare Baseline vs Fine-tuned Performance", "evaluation", ev.compare_performance,
      (this("training"), this("baseline_scores"), this("finetuned_scores"))),
    S("calculate_improvement_metrics", "Calculate Improvement Metrics", "evaluation", ev.calculate_improvement_metrics,
      (step("compare_performance"),)),
    S("save_cycle_results", "Save Cycle {n} Complete Results", "checkpoint", save.save_cycle_results,
      (step("compare_performance"), step("calculate_improvement_metrics")), ("comparison", "improvement", "results")),
)

# What a cycle's report rows are made of (save_pipeline_results, _cycle_result and the promotion).
CYCLE_RECORD = tuple(every_cycle(name) for name in (
    "results", "questions", "references", "baseline_answers", "finetuned_answers", "training", "dataset",
    "baseline_scores", "finetuned_scores", "adapter"))

FINAL_STEPS: tuple[StepSpec, ...] = (
    S("compare_all_cycles", "Compare All Cycles Performance", "report", fin.compare_all_cycles,
      (every_cycle("results"), every_cycle("comparison"), every_cycle("baseline_scores"),
       every_cycle("finetuned_scores"), run("gold_ceiling"), BASE)),
    S("calculate_overall_improvement", "Calculate Overall Improvement", "report", fin.calculate_overall_improvement,
      (step("compare_all_cycles"),)),
    S("save_pipeline_results", "Save Complete Pipeline Results", "report", fin.save_pipeline_results,
      (step("compare_all_cycles"), step("calculate_overall_improvement"), *CYCLE_RECORD, *HELD_OUT,
       run("gold_ceiling"), BASE), ("all_cycles", "overall", "results", "report")),
    S("pipeline_complete", "PIPELINE COMPLETE", "report", fin.pipeline_complete,
      (run("run"), step("save_pipeline_results")), ("completion",)),
    S("display_final_results", "Display Final Results", "report", fin.display_final_results,
      (run("results"), step("save_pipeline_results"))),
    S("show_performance_comparison", "Show Performance Comparison", "report", fin.show_performance_comparison,
      (run("results"), step("save_pipeline_results"))),
    S("display_improvement_statistics", "Display Improvement Statistics", "report", fin.display_improvement_statistics,
      (run("results"), step("save_pipeline_results"))),
    S("show_sample_qa_pairs", "Show Sample Q&A Pairs from Both Cycles", "report", fin.show_sample_qa_pairs,
      (run("results"), step("save_pipeline_results"))),
)

ALL_STEPS = {s.id: s for s in (*SETUP_STEPS, *CYCLE_STEPS, *FINAL_STEPS)}


def box_names(config: KdflowConfig, cycle: int | None) -> dict[str, object]:
    """Values the box templates use, all from the configuration: e.g. ``Generate 3 NEW Questions using
    SmolLM2-135M-Instruct.Q4_1`` or ``Calculate Baseline Key Fact Recall Score``."""
    n, pipeline = cycle or 1, config.pipeline
    pairs = pipeline.questions_per_cycle * (n if pipeline.training_pairs == "all" else 1)
    return {"q": pipeline.questions_per_cycle, "pairs": pairs, "prev": n - 1,
            "teacher": config.teacher.served_model, "student": config.student.served_model,
            "kb": config.knowledge_base.name, "topics": ", ".join(t.title() for t in pipeline.topics),
            "metric": str(config.promotion.metric).replace("_", " ").title()}


def display_name(spec: StepSpec, config: KdflowConfig, cycle: int | None) -> str:
    """The box text of ``spec`` in ``cycle`` under ``config``: the task's display name and the log's."""
    return spec.display_name(cycle, **box_names(config, cycle))


def producers(steps: tuple[StepSpec, ...]) -> dict[str, str]:
    """Checkpoint name -> the id of the step among ``steps`` that publishes it."""
    return {name: s.id for s in steps for name in s.produces}


RUN_PRODUCERS = producers(SETUP_STEPS + FINAL_STEPS)  # run-level checkpoints
CYCLE_PRODUCERS = producers(CYCLE_STEPS)  # each cycle's checkpoints


def declared_upstream(spec: StepSpec, cycle: int | None, max_cycles: int) -> list[tuple[int | None, str]]:
    """``(cycle or None, step id)`` of every step whose output ``spec`` declares as an input in ``cycle``:
    the steps whose pointers it reads (same cycle, or the setup/final steps) and the publishers of the
    checkpoints it reads. The DAG draws an edge from each."""
    found = [(cycle, name) for name in spec.step_inputs]
    for item in spec.checkpoint_inputs:
        if item.scope == "run":
            found.append((None, RUN_PRODUCERS[item.name]))
            continue
        n = cycle or 0
        cycles = {"this": [n], "previous": [n - 1], "earlier": range(1, n),
                  "every_cycle": range(1, max_cycles + 1)}[item.scope]
        found += [(c, CYCLE_PRODUCERS[item.name]) for c in cycles if c >= 1]
    return list(dict.fromkeys(found))
