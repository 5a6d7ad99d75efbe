"""The ``results`` document a run hands to :func:`kdflow.evaluation.report.build_report`.

It holds raw data only (per-question scores, answers, training logs, usage counters); every
number of the report is computed from it, so the report cannot disagree with the store.

Schema (``RunResults.model_validate(results)`` checks a plain dict against it)::

    {
      "run_id": "manual__2026-01-01",
      "metrics": ["answer_relevancy", "semantic_similarity", "rouge_l"],   # column order
      "headline_metric": "answer_relevancy",
      "success_threshold": 0.5,
      "cycles": [
        {
          "cycle": 1,
          "scores": [ScoreRow, ...],        # baseline + finetuned, train + held_out, this cycle
          "training": {"losses": [2.1, 1.7, ...], "wall_s": 41.2, "tokens_per_s": 830.0, "steps": 9},
          "answers": [                      # one per (question, split): the sample Q&A material
            {"question_id", "topic", "split", "question", "reference",
             "baseline_answer", "finetuned_answer"}
          ],
          "gate": {"questions_kept": 3, "references_dropped": 1, ...},  # teacher quality gate counts, may be {}
          "gate_dropped": [{"question_id", "split", "question", "reason"}]  # what the gate dropped
        }
      ],
      "usage": {"teacher": {"calls", "cache_hits", "errors", "prompt_tokens", "completion_tokens",
                            "seconds", "cost_usd"},          # = UsageLedger.as_dict()["tasks"]
                "judge": {...}},
      "promotion": {"promote": true, "reason": "...", ...} | null,  # decide_promotion() output
      "gold_metrics": ["key_fact_recall", ...], "gold_ceiling": {qid: {metric: score}},
      "gold_set_items": 150,  # the gold set's size; fewer are scored under evaluation.gold_per_topic
      "start_model": "base model", "statistics": {"resamples", "confidence", "seed"},
      "roles": [{"role", "model", "provider", "where"}],
      "reading": {"read", "reason", "base_model", "documents", "read_in_run", ...} | null  # student_base.json
    }
    Cycles may also hold "coverage" and "decontaminated" (see CycleResult); score rows of split
    "gold" are the gold set's (answered at cycle 1's baseline and every fine-tuned stage).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kdflow.llm.cache import TaskUsage
from kdflow.records import ScoreRow, Split


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainingSummary(_Model):
    losses: list[float] = Field(default_factory=list)  # training loss per logged step, in order
    wall_s: float | None = None
    tokens_per_s: float | None = None
    steps: int | None = None

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


class QAPair(_Model):
    question_id: str
    topic: str
    split: Split = "train"
    question: str
    reference: str = ""
    baseline_answer: str = ""
    finetuned_answer: str = ""
    unread_answer: str = ""  # gold only: the configured student's, before it read the knowledge base


class CycleResult(_Model):
    cycle: int = Field(ge=1)
    scores: list[ScoreRow] = Field(default_factory=list)
    training: TrainingSummary | None = None
    answers: list[QAPair] = Field(default_factory=list)
    gate: dict[str, int] = Field(default_factory=dict)
    # items the teacher-data gate dropped: {"question_id", "split", "question", "reason"}
    gate_dropped: list[dict[str, str]] = Field(default_factory=list)
    # knowledge-base coverage after this cycle: {"passages_covered", "passages", "share"}
    coverage: dict[str, Any] = Field(default_factory=dict)
    # training questions left out for being too close to a gold or held-out question
    decontaminated: list[dict[str, Any]] = Field(default_factory=list)


class RunResults(_Model):
    run_id: str
    metrics: list[str] = Field(min_length=1)
    headline_metric: str = "answer_relevancy"
    success_threshold: float = Field(0.5, ge=0.0, le=1.0)
    cycles: list[CycleResult] = Field(min_length=1)
    usage: dict[str, TaskUsage] = Field(default_factory=dict)  # UsageLedger.as_dict()["tasks"] as is
    promotion: dict[str, Any] | None = None
    # The gold set's metrics (the first leads the verdict), the teacher's open-book scores on it
    # (question id -> metric -> score), and what the run started from ("base model" or a champion).
    gold_metrics: list[str] = Field(default_factory=list)
    gold_ceiling: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    gold_set_items: int | None = None  # the whole set's size (None: as many as were scored)
    start_model: str = "base model"
    # paired statistics options: {"resamples", "confidence", "seed"}
    statistics: dict[str, Any] = Field(default_factory=dict)
    # who played which part: [{"role", "model", "provider", "where"}]
    roles: list[dict[str, str]] = Field(default_factory=list)
    # the run's health: one line each (experiment tracking: where, or which steps could not log)
    health: list[str] = Field(default_factory=list)
    # the answered reviews (issue 21): {"review", "cycle", "outcome", "option", "dropped", "by", "at", "timed_out",
    # "reason"}, from kdflow.pipeline.review.run_decisions
    reviews: list[dict[str, Any]] = Field(default_factory=list)
    # what the student started from (kdflow.pipeline.reading_steps' student_base.json): whether it read the
    # knowledge base first, why (not), how many passages, which run read it; None for runs before that step
    reading: dict[str, Any] | None = None


def parse_results(results: dict[str, Any] | RunResults) -> RunResults:
    """Validate a results dict; cycles come back sorted by number."""
    parsed = results if isinstance(results, RunResults) else RunResults.model_validate(results)
    parsed.cycles.sort(key=lambda c: c.cycle)
    return parsed
