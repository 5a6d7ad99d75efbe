"""The diagram's "Save ..." boxes: validate what the previous task staged, publish it under its
final key and record it in the run manifest. A rerun republishes over the same keys."""

from __future__ import annotations

import logging
import tempfile
from typing import Any

from kdflow.pipeline.context import CheckpointError, RunContext

log = logging.getLogger(__name__)


def _publish_rows(ctx: RunContext, cycle: int, name: str, schema: str, source: str) -> dict[str, Any]:
    """Validate the rows ``source`` staged against ``schema`` and publish them as ``name``."""
    return ctx.publish(cycle, name, ctx.pointer(source), schema=schema).to_xcom()


def save_questions(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return _publish_rows(ctx, cycle, "questions.jsonl", "questions", "generate_questions")


def save_baseline_answers(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return _publish_rows(ctx, cycle, "baseline_answers.jsonl", "answers", "generate_baseline_answers")


def save_reference_answers(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return _publish_rows(ctx, cycle, "references.jsonl", "references", "generate_reference_answers")


def save_finetuned_answers(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return _publish_rows(ctx, cycle, "finetuned_answers.jsonl", "answers", "generate_finetuned_answers")


def _save_evaluation(ctx: RunContext, cycle: int, stage: str) -> dict[str, Any]:
    """Publish the stage's per-question scores and their aggregate together."""
    scores = ctx.publish(cycle, f"{stage}_scores.jsonl", ctx.pointer(f"evaluate_{stage}"), schema="scores")
    aggregate = ctx.publish(cycle, f"{stage}_aggregate.json", ctx.pointer(f"calculate_{stage}_score"))
    return scores.model_copy(update={"summary": {**aggregate.summary, "aggregate": aggregate.url}}).to_xcom()


def save_baseline_evaluation(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return _save_evaluation(ctx, cycle, "baseline")


def save_finetuned_evaluation(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return _save_evaluation(ctx, cycle, "finetuned")


def save_adapter(ctx: RunContext, cycle: int) -> dict[str, Any]:
    """Check every file of the staged adapter against its marker, then publish the folder."""
    staged = ctx.pointer("finetune_student")
    with tempfile.TemporaryDirectory(prefix="kdflow-adapter-") as tmp:
        try:
            ctx.store.download_dir(staged, tmp)
        except Exception as exc:  # noqa: BLE001 - any store failure means nothing is published
            raise CheckpointError(f"staged adapter of cycle {cycle} is incomplete or corrupt: {exc}") from exc
        pointer = ctx.store.upload_dir(tmp, ctx.key(cycle, "adapter"), summary=staged.get("summary", {}))
    ctx.record(cycle, "adapter", pointer)
    log.info("adapter of cycle %d published at %s (%d files)", cycle, pointer.url.rsplit("/", 1)[0], pointer.count)
    return pointer.to_xcom()


def finetuning_complete(ctx: RunContext, cycle: int) -> dict[str, Any]:
    """Publish the training record (loss curve, time, throughput, plan) beside the adapter."""
    adapter = ctx.pointer("save_adapter")
    base = adapter["key"].rsplit("/", 1)[0]
    training = ctx.store.read_json(f"{base}/train_result.json")
    summary = {k: training.get(k) for k in ("steps", "wall_s", "tokens_per_s", "peak_memory_mb")}
    summary["final_loss"] = training["losses"][-1] if training.get("losses") else None
    log.info("cycle %d fine-tuning complete: %s", cycle, summary)
    return ctx.publish_json(cycle, "training.json", training, summary=summary).to_xcom()


def save_cycle_results(ctx: RunContext, cycle: int) -> dict[str, Any]:
    """Publish the comparison and improvement metrics, and one index of the cycle's checkpoints (the
    names and URLs the manifest lists for the cycle: a listing, not an input whose content it reads)."""
    comparison = ctx.publish(cycle, "comparison.json", ctx.pointer("compare_performance"))
    improvement = ctx.publish(cycle, "improvement.json", ctx.pointer("calculate_improvement_metrics"))
    own = ctx.checkpoint_name(cycle, "results.json")  # a rerun must not index its own earlier copy
    index = {
        name: entry["url"]
        for name, entry in ctx.store.manifest(ctx.run_id).items()
        if name.startswith(f"cycle_{cycle}.") and name != own
    }
    index.update({"comparison": comparison.url, "improvement": improvement.url})
    record = {"cycle": cycle, "checkpoints": index}
    return ctx.publish_json(cycle, "results.json", record, summary=improvement.summary).to_xcom()
