"""Evaluation steps: RAGAS scores per answer, their aggregates, and the cycle's comparison."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

from kdflow.evaluation import JUDGE_METRICS
from kdflow.pipeline.artifacts import cycle_scores, endpoint_session, run_gold, run_questions, statistics_of
from kdflow.pipeline.context import RunContext
from kdflow.records import ScoreRow, gate_drop_reason

log = logging.getLogger(__name__)


def _evaluate(ctx: RunContext, cycle: int, stage: str) -> dict[str, Any]:
    from kdflow.evaluation.metrics import score_answers, score_gold_answers
    from kdflow.llm.cache import UsageLedger

    gold = run_gold(ctx)
    topics = {q.id: q.topic for q in [*run_questions(ctx, cycle), *(item.as_question() for item in gold)]}
    references = {r["question_id"]: r for r in ctx.rows(ctx.checkpoint(cycle, "references.jsonl"))}
    answers = ctx.rows(ctx.checkpoint(cycle, f"{stage}_answers.jsonl"))
    gold_rows = [{"question_id": a["question_id"], "topic": topics[a["question_id"]], "split": a["split"],
                  "question": a["question"], "answer": a["answer"], "stage": a["stage"]}
                 for a in answers if a["split"] == "gold"]
    # A reference the gate dropped is no ground truth: its metrics are recorded as failures (see score_answers).
    rows = [
        {"question_id": a["question_id"], "topic": topics[a["question_id"]], "split": a["split"],
         "question": a["question"],
         "answer": a["answer"], "reference": references[a["question_id"]]["reference"],
         "reference_dropped": gate_drop_reason(references[a["question_id"]])}
        for a in answers if a["split"] != "gold"
    ]
    needs_judge = any(m in JUDGE_METRICS for m in ctx.config.evaluation.metrics)
    session = endpoint_session(ctx, cycle, f"judge_{stage}") if needs_judge else nullcontext((None, UsageLedger()))
    with session as (judge, ledger):
        scores = score_answers(ctx.config.evaluation, rows, judge=judge, store=ctx.store, ledger=ledger, cycle=cycle,
                               stage=stage)
    # The gold set is scored without the judge, against its gold answers and key facts; each answer under its own
    # stage (cycle 1's baseline file also holds the student's answers from before it read the knowledge base).
    for answered in dict.fromkeys(row["stage"] for row in gold_rows):
        scores += score_gold_answers(ctx.config.evaluation, [r for r in gold_rows if r["stage"] == answered], gold,
                                     store=ctx.store, ledger=UsageLedger(), cycle=cycle, stage=answered)
    failures = sum(len(s.failures) for s in scores)
    if failures:
        log.warning("cycle %d %s: %d metric values failed and are excluded from the means", cycle, stage, failures)
    return ctx.stage_rows(cycle, f"{stage}_scores.jsonl", scores, summary={"failures": failures}).to_xcom()


def evaluate_baseline(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return _evaluate(ctx, cycle, "baseline")


def evaluate_finetuned(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return _evaluate(ctx, cycle, "finetuned")


def _calculate(ctx: RunContext, cycle: int, stage: str) -> dict[str, Any]:
    """Aggregate the staged per-question scores (mean, median, count, failures per metric)."""
    from kdflow.evaluation.aggregate import aggregate

    rows = [ScoreRow.model_validate(r) for r in ctx.rows(ctx.pointer(f"evaluate_{stage}"))]
    result = aggregate(rows)
    headline = _headline(ctx, result)
    log.info("cycle %d %s scores: %s", cycle, stage, headline)
    return ctx.stage_json(cycle, f"{stage}_aggregate.json", result, summary=headline).to_xcom()


def _headline(ctx: RunContext, aggregate: dict[str, Any]) -> dict[str, Any]:
    """Small numbers for XCom and the logs: mean of each metric on the trained questions."""
    per_stage = aggregate.get("by_split_stage", {}).get("train", {})
    stage = next(iter(per_stage.values()), {})
    return {m: (stage.get(m) or {}).get("mean") for m in ctx.config.evaluation.metrics}


def calculate_baseline_score(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return _calculate(ctx, cycle, "baseline")


def calculate_finetuned_score(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return _calculate(ctx, cycle, "finetuned")


def compare_performance(ctx: RunContext, cycle: int) -> dict[str, Any]:
    from kdflow.evaluation.aggregate import compare_cycle

    training = ctx.store.read_json(ctx.checkpoint(cycle, "training.json"))
    comparison = compare_cycle(cycle_scores(ctx, cycle, "baseline", only_stage=True),
                               cycle_scores(ctx, cycle, "finetuned", only_stage=True),
                               training=training, success_threshold=ctx.config.evaluation.success_threshold,
                               **statistics_of(ctx))
    return ctx.stage_json(cycle, "comparison.json", comparison).to_xcom()


def calculate_improvement_metrics(ctx: RunContext, cycle: int) -> dict[str, Any]:
    """Improvement per split and metric: baseline -> fine-tuned mean, the paired delta with its
    interval, p-value and verdict."""
    comparison = ctx.store.read_json(ctx.pointer("compare_performance"))
    improvement: dict[str, Any] = {}
    for split, metrics in comparison.get("splits", {}).items():
        for metric, values in metrics.items():
            improvement[f"{split}.{metric}"] = {k: values.get(k) for k in (
                "baseline_mean", "finetuned_mean", "mean_delta", "ci_low", "ci_high", "p_value", "verdict", "paired",
                "improved_share")}
    for key, values in improvement.items():
        log.info("cycle %d %s: %s", cycle, key, values)
    summary = {k: v.get("verdict") for k, v in improvement.items()}
    return ctx.stage_json(cycle, "improvement.json", improvement, summary=summary).to_xcom()
