"""The diagram's "Save ..." boxes: validate what the previous task staged, publish it under its
final key and record it in the run manifest. A rerun republishes over the same keys."""

from __future__ import annotations

import logging
import tempfile
from typing import Any

from kdflow.pipeline.context import CheckpointError, RunContext

log = logging.getLogger(__name__)


def _publish_rows(name: str, schema: str, source: str):
    def step(ctx: RunContext, cycle: int, inputs: dict[str, Any]) -> dict[str, Any]:
        return ctx.publish(cycle, name, inputs[source], schema=schema).to_xcom()

    step.__name__ = f"save_{name.split('.')[0]}"
    step.__doc__ = f"Validate the staged {name} against the {schema} schema and publish it."
    return step


save_questions = _publish_rows("questions.jsonl", "questions", "generate_questions")
save_baseline_answers = _publish_rows("baseline_answers.jsonl", "answers", "generate_baseline_answers")
save_reference_answers = _publish_rows("references.jsonl", "references", "generate_reference_answers")
save_finetuned_answers = _publish_rows("finetuned_answers.jsonl", "answers", "generate_finetuned_answers")


def _save_evaluation(stage: str):
    def step(ctx: RunContext, cycle: int, inputs: dict[str, Any]) -> dict[str, Any]:
        scores = ctx.publish(cycle, f"{stage}_scores.jsonl", inputs[f"evaluate_{stage}"], schema="scores")
        aggregate = ctx.publish(cycle, f"{stage}_aggregate.json", inputs[f"calculate_{stage}_score"])
        return scores.model_copy(update={"summary": {**aggregate.summary, "aggregate": aggregate.url}}).to_xcom()

    step.__name__ = f"save_{stage}_evaluation"
    step.__doc__ = f"Publish the {stage} per-question scores and their aggregate together."
    return step


save_baseline_evaluation = _save_evaluation("baseline")
save_finetuned_evaluation = _save_evaluation("finetuned")


def save_adapter(ctx: RunContext, cycle: int, inputs: dict[str, Any]) -> dict[str, Any]:
    """Check every file of the staged adapter against its marker, then publish the folder."""
    staged = inputs["finetune_student"]
    with tempfile.TemporaryDirectory(prefix="kdflow-adapter-") as tmp:
        try:
            ctx.store.download_dir(staged, tmp)
        except Exception as exc:  # noqa: BLE001 - any store failure means nothing is published
            raise CheckpointError(f"staged adapter of cycle {cycle} is incomplete or corrupt: {exc}") from exc
        pointer = ctx.store.upload_dir(tmp, ctx.key(cycle, "adapter"), summary=staged.get("summary", {}))
    ctx.store.record_checkpoint(ctx.run_id, ctx.checkpoint_name(cycle, "adapter"), pointer)
    log.info("adapter of cycle %d published at %s (%d files)", cycle, pointer.url.rsplit("/", 1)[0], pointer.count)
    return pointer.to_xcom()


def finetuning_complete(ctx: RunContext, cycle: int, inputs: dict[str, Any]) -> dict[str, Any]:
    """Publish the training record (loss curve, time, throughput, plan) beside the adapter."""
    adapter = inputs["save_adapter"]
    base = adapter["key"].rsplit("/", 1)[0]
    training = ctx.store.read_json(f"{base}/train_result.json")
    summary = {k: training.get(k) for k in ("steps", "wall_s", "tokens_per_s", "peak_memory_mb")}
    summary["final_loss"] = training["losses"][-1] if training.get("losses") else None
    log.info("cycle %d fine-tuning complete: %s", cycle, summary)
    return ctx.publish_json(cycle, "training.json", training, summary=summary).to_xcom()


def save_cycle_results(ctx: RunContext, cycle: int, inputs: dict[str, Any]) -> dict[str, Any]:
    """Publish the comparison and improvement metrics, and one index of the cycle's checkpoints."""
    comparison = ctx.publish(cycle, "comparison.json", inputs["compare_performance"])
    improvement = ctx.publish(cycle, "improvement.json", inputs["calculate_improvement_metrics"])
    own = ctx.checkpoint_name(cycle, "results.json")  # a rerun must not index its own earlier copy
    index = {
        name: entry["url"]
        for name, entry in ctx.store.manifest(ctx.run_id).items()
        if name.startswith(f"cycle_{cycle}.") and name != own
    }
    index.update({"comparison": comparison.url, "improvement": improvement.url})
    return ctx.publish_json(cycle, "results.json", {"cycle": cycle, "checkpoints": index}, summary=improvement.summary).to_xcom()
