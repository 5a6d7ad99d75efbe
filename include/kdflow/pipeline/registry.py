"""Every box of the design diagram (docs/pipeline-diagram.md, main flow) as a step.

The DAG and the CLI runner both walk these lists, so the diagram is written down once. This
module imports nothing heavy: the DAG file imports it at parse time.

``needs`` names earlier steps whose pointers a step receives (same cycle first, then the
setup steps); cross-cycle inputs (the previous adapter, earlier questions) come from the
run manifest, so a cleared task reads exactly what was published.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["setup", "teacher", "student", "evaluation", "checkpoint", "report"]


@dataclass(frozen=True)
class StepSpec:
    id: str
    display: str  # box text; {n} cycle, {q} questions, {pairs} accumulated pairs, {teacher}, {student}
    kind: Kind
    target: str  # "module:function" inside kdflow.pipeline
    needs: tuple[str, ...] = ()
    display_later: str | None = None  # box text in cycles after the first, where the diagram differs

    def display_name(self, cycle: int | None = None, **names: object) -> str:
        template = self.display_later if (cycle or 0) > 1 and self.display_later else self.display
        return template.format(n=cycle, **names)

    @property
    def uses_student(self) -> bool:
        return self.kind == "student"


S = StepSpec

SETUP_STEPS: tuple[StepSpec, ...] = (
    S("start_pipeline", "User Clicks Start Pipeline", "setup", "setup_steps:start_pipeline"),
    S("load_configuration", "Load Configuration", "setup", "setup_steps:load_configuration", ("start_pipeline",)),
    S("load_knowledge_base", "Load Kubernetes v1.28 Knowledge Base", "setup", "setup_steps:load_knowledge_base"),
    S("select_topics", "Select Topics: Pods, Services, Storage", "setup", "setup_steps:select_topics", ("load_knowledge_base",)),
    S("prepare_held_out_questions", "Prepare Held-out Questions", "teacher", "teacher_steps:prepare_held_out_questions", ("select_topics",)),
)

CYCLE_STEPS: tuple[StepSpec, ...] = (
    S("cycle_start", "CYCLE {n} START", "setup", "setup_steps:cycle_start"),
    S("generate_questions", "Generate {q} Questions using {teacher}", "teacher", "teacher_steps:generate_questions",
      ("cycle_start",), display_later="Generate {q} NEW Questions using {teacher}"),
    S("save_questions", "Save Questions Checkpoint", "checkpoint", "checkpoint_steps:save_questions", ("generate_questions",),
      display_later="Save Cycle {n} Questions"),
    S("load_student_model", "Load {student} Model 4-bit QLoRA", "student", "student_steps:load_student_model", ("cycle_start",),
      display_later="Load Fine-tuned {student} from Cycle {prev}"),
    S("generate_baseline_answers", "Generate Baseline Answers for {q} Questions", "student",
      "student_steps:generate_baseline_answers", ("load_student_model", "save_questions"),
      display_later="Generate Baseline Answers for {q} NEW Questions"),
    S("save_baseline_answers", "Save Baseline Answers", "checkpoint", "checkpoint_steps:save_baseline_answers",
      ("generate_baseline_answers",), display_later="Save Cycle {n} Baseline Answers"),
    S("generate_reference_answers", "Generate Reference Answers using {teacher}", "teacher",
      "teacher_steps:generate_reference_answers", ("save_questions",),
      display_later="Generate Reference Answers for NEW Questions"),
    S("save_reference_answers", "Save Reference Answers", "checkpoint", "checkpoint_steps:save_reference_answers",
      ("generate_reference_answers",), display_later="Save Cycle {n} Reference Answers"),
    S("evaluate_baseline", "Evaluate Baseline Answers using RAGAS", "evaluation", "eval_steps:evaluate_baseline",
      ("save_baseline_answers", "save_reference_answers"), display_later="Evaluate Cycle {n} Baseline Answers"),
    S("calculate_baseline_score", "Calculate Baseline Relevancy Score", "evaluation", "eval_steps:calculate_baseline_score",
      ("evaluate_baseline",), display_later="Calculate Cycle {n} Baseline Score"),
    S("save_baseline_evaluation", "Save Baseline Evaluation", "checkpoint", "checkpoint_steps:save_baseline_evaluation",
      ("evaluate_baseline", "calculate_baseline_score"), display_later="Save Cycle {n} Baseline Evaluation"),
    S("prepare_training_dataset", "Prepare Training Dataset {pairs} Q&A Pairs", "setup", "student_steps:prepare_training_dataset",
      ("save_reference_answers", "save_baseline_evaluation"), display_later="Prepare Training Dataset {pairs} Q&A Pairs Total"),
    S("finetune_student", "Fine-tune {student} with QLoRA", "student", "student_steps:finetune_student",
      ("prepare_training_dataset", "cycle_start"), display_later="Fine-tune {student} with QLoRA Round {n}"),
    S("save_adapter", "Save Fine-tuned Adapter", "checkpoint", "checkpoint_steps:save_adapter", ("finetune_student",),
      display_later="Save Cycle {n} Fine-tuned Adapter"),
    S("finetuning_complete", "Fine-tuning Complete", "checkpoint", "checkpoint_steps:finetuning_complete", ("save_adapter",),
      display_later="Cycle {n} Fine-tuning Complete"),
    S("load_finetuned_model", "Load Fine-tuned {student} Model", "student", "student_steps:load_finetuned_model",
      ("finetuning_complete",), display_later="Load Cycle {n} Fine-tuned {student}"),
    S("generate_finetuned_answers", "Generate Fine-tuned Answers for {q} Questions", "student",
      "student_steps:generate_finetuned_answers", ("load_finetuned_model",), display_later="Generate Cycle {n} Fine-tuned Answers"),
    S("save_finetuned_answers", "Save Fine-tuned Answers", "checkpoint", "checkpoint_steps:save_finetuned_answers",
      ("generate_finetuned_answers",), display_later="Save Cycle {n} Fine-tuned Answers"),
    S("evaluate_finetuned", "Evaluate Fine-tuned Answers using RAGAS", "evaluation", "eval_steps:evaluate_finetuned",
      ("save_finetuned_answers",), display_later="Evaluate Cycle {n} Fine-tuned Answers"),
    S("calculate_finetuned_score", "Calculate Fine-tuned Relevancy Score", "evaluation", "eval_steps:calculate_finetuned_score",
      ("evaluate_finetuned",), display_later="Calculate Cycle {n} Fine-tuned Score"),
    S("save_finetuned_evaluation", "Save Fine-tuned Evaluation", "checkpoint", "checkpoint_steps:save_finetuned_evaluation",
      ("evaluate_finetuned", "calculate_finetuned_score"), display_later="Save Cycle {n} Fine-tuned Evaluation"),
    S("compare_performance", "Compare Baseline vs Fine-tuned Performance", "evaluation", "eval_steps:compare_performance",
      ("save_finetuned_evaluation",)),
    S("calculate_improvement_metrics", "Calculate Improvement Metrics", "evaluation", "eval_steps:calculate_improvement_metrics",
      ("compare_performance",)),
    S("save_cycle_results", "Save Cycle {n} Complete Results", "checkpoint", "checkpoint_steps:save_cycle_results",
      ("compare_performance", "calculate_improvement_metrics")),
)

FINAL_STEPS: tuple[StepSpec, ...] = (
    S("compare_all_cycles", "Compare All Cycles Performance", "report", "final_steps:compare_all_cycles"),
    S("calculate_overall_improvement", "Calculate Overall Improvement", "report", "final_steps:calculate_overall_improvement",
      ("compare_all_cycles",)),
    S("save_pipeline_results", "Save Complete Pipeline Results", "report", "final_steps:save_pipeline_results",
      ("compare_all_cycles", "calculate_overall_improvement")),
    S("pipeline_complete", "PIPELINE COMPLETE", "report", "final_steps:pipeline_complete", ("save_pipeline_results",)),
    S("display_final_results", "Display Final Results", "report", "final_steps:display_final_results", ("save_pipeline_results",)),
    S("show_performance_comparison", "Show Performance Comparison", "report", "final_steps:show_performance_comparison",
      ("save_pipeline_results",)),
    S("display_improvement_statistics", "Display Improvement Statistics", "report", "final_steps:display_improvement_statistics",
      ("save_pipeline_results",)),
    S("show_sample_qa_pairs", "Show Sample Q&A Pairs from Both Cycles", "report", "final_steps:show_sample_qa_pairs",
      ("save_pipeline_results",)),
)

ALL_STEPS = {s.id: s for s in (*SETUP_STEPS, *CYCLE_STEPS, *FINAL_STEPS)}


def box_names(cycle: int, *, questions: int, pairs: int, teacher: str, student: str) -> dict[str, object]:
    """Values the box templates use, e.g. ``Generate 3 NEW Questions using gpt-4o-mini``."""
    return {"q": questions, "pairs": pairs, "teacher": teacher, "student": student, "prev": cycle - 1}
