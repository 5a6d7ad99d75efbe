"""The evaluation and promotion sections: which metrics are measured (held-out and gold set), how the
paired statistics run, and what a new student must beat to be promoted. Together because promotion can
only compare a metric that evaluation measures (:class:`kdflow.config.model.KdflowConfig` checks that
pairing), and ``kdflow.evaluation`` reads both."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kdflow.config.base import _Section

EvaluationMetric = Literal[
    "answer_relevancy", "semantic_similarity", "rouge_l", "bleu", "answer_correctness", "factual_correctness"
]


# Judge-free metrics of the gold set: key_fact_recall needs the gold item's key facts.
GoldMetric = Literal["key_fact_recall", "semantic_similarity", "rouge_l", "bleu"]


class EvaluationConfig(_Section):
    metrics: list[EvaluationMetric] = Field(
        default_factory=lambda: ["answer_relevancy", "semantic_similarity", "rouge_l"], min_length=1
    )
    # The gold set (kdflow.gold): "builtin" = the Kubernetes v1.28 set shipped with kdflow, a path to
    # your own JSONL, or null to evaluate on the teacher-written held-out set only.
    gold_path: str | None = "builtin"
    gold_metrics: list[GoldMetric] = Field(
        default_factory=lambda: ["key_fact_recall", "semantic_similarity", "rouge_l"], min_length=1
    )
    # Gold questions per topic the student is answered and scored on (a seeded stratified sample, the
    # same in every run of a seed); null = every one. Decontamination protects the whole set.
    gold_per_topic: int | None = Field(None, ge=1, le=10_000)
    # The teacher answers the gold questions open book (as it writes references): the ceiling.
    teacher_ceiling: bool = True
    # Gold questions per topic the teacher answers for the ceiling (a seeded stratified sample of the
    # scored ones); null = every one. `make run` samples 4 per topic to stay short; nightly runs answer all.
    ceiling_per_topic: int | None = Field(None, ge=1, le=10_000)
    # The student's token budget for a gold answer (one or two sentences are asked for).
    gold_max_new_tokens: int = Field(48, ge=8, le=4096)
    # Paired statistics: bootstrap resamples and the confidence of the intervals.
    bootstrap_resamples: int = Field(10_000, ge=1_000, le=1_000_000)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    # A training question at or above this MiniLM cosine to any gold or held-out question is left
    # out of training (decontamination).
    decontamination_similarity: float = Field(0.8, gt=0.0, le=1.0)
    relevancy_strictness: int = Field(3, ge=1, le=10)
    judge_temperature: float = Field(0.7, ge=0.0, le=2.0)
    judge_max_tokens: int = Field(256, ge=8, le=8192)
    judge_max_retries: int = Field(2, ge=0, le=10)
    judge_concurrency: int = Field(8, ge=1, le=64)
    success_threshold: float = Field(0.5, ge=0.0, le=1.0)


PROMOTION_METRIC = "semantic_similarity"  # promotion.metric null: this one when measured, else the headline


class PromotionConfig(_Section):
    # None: resolved by KdflowConfig (the first gold metric with a gold set, else against evaluation.metrics)
    metric: EvaluationMetric | GoldMetric | None = None
    margin: float = Field(0.0, ge=-1.0, le=1.0)
    topic_tolerance: float = Field(0.05, ge=0.0, le=1.0)
