"""The exported GGUF answers as the pipeline measured it: it answers gold questions (greedy, the
pipeline's gold token budget) and is compared with the answers the pipeline recorded for the same
adapter in the same run (transformers, bf16, adapter unmerged): the mean key-fact recall must be
within :data:`RECALL_TOLERANCE`, and the answers must agree in wording (mean share of each recorded
answer reproduced before the first differing token) at least :data:`MIN_PREFIX_AGREEMENT`.

The GGUF is quantized (Q8_0) and runs on llama.cpp, so its answers need not be identical. The
wording check is the one that catches a broken export when the student states few facts (the
embedded student's recall is ~0.03, which a model answering nonsense also scores). Both bounds come
from measured runs: docs/benchmarks/export.md."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kdflow.export.gguf import ExportError
from kdflow.export.source import ExportSource

log = logging.getLogger(__name__)

RECALL_TOLERANCE = 0.10
MIN_PREFIX_AGREEMENT = 0.4
SMOKE_QUESTIONS = 12


def recorded_gold_answers(source: ExportSource) -> dict[str, str]:
    """Question text -> the answer the pipeline recorded for the exported adapter (its cycle's
    fine-tuned answers, split gold)."""
    rows = source.run.rows(source.run.checkpoint(source.cycle, "finetuned_answers.jsonl"))
    return {row["question"]: row["answer"] for row in rows if row.get("split") == "gold"}


def smoke_test(source: ExportSource, gguf: Path, *, questions: int = SMOKE_QUESTIONS,
               tolerance: float = RECALL_TOLERANCE, min_agreement: float = MIN_PREFIX_AGREEMENT,
               max_new_tokens: int = 48) -> dict[str, Any]:
    """Answer up to ``questions`` gold questions with ``gguf``; compare with the recorded answers.
    ``passed`` is False when the mean key-fact recall differs by more than ``tolerance`` or the
    wording agrees less than ``min_agreement``."""
    from transformers import AutoTokenizer

    from kdflow.export.gguf import gguf_greedy_tokens
    from kdflow.export.merge import agreement
    from kdflow.gold import key_fact_recall
    from kdflow.pipeline.artifacts import run_gold
    from kdflow.student.prompt import build_prompt

    recorded = recorded_gold_answers(source)
    gold = {item.question: item for item in run_gold(source.run)}
    asked = [q for q in recorded if q in gold][:questions]
    if not asked:
        raise ExportError(f"run {source.run.run_id} recorded no gold answers for cycle {source.cycle}: nothing to "
                          "compare the export with")
    tokenizer = AutoTokenizer.from_pretrained(str(source.base_path()))
    prompts = [build_prompt(tokenizer, q) for q in asked]
    ids = gguf_greedy_tokens(gguf, tokenizer, prompts, max_new_tokens)
    answers = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
    facts = {q: gold[q].key_facts for q in asked}
    exported = [key_fact_recall(a, facts[q]) for q, a in zip(asked, answers, strict=True)]
    pipeline = [key_fact_recall(recorded[q], facts[q]) for q in asked]
    difference = sum(exported) / len(asked) - sum(pipeline) / len(asked)
    wording = agreement([tokenizer(recorded[q], add_special_tokens=False)["input_ids"] for q in asked],
                        [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers])
    pairs = list(zip(asked, answers, strict=True))
    result = {"questions": len(asked), "identical_answers": sum(a == recorded[q] for q, a in pairs),
              "key_fact_recall_export": round(sum(exported) / len(asked), 4),
              "key_fact_recall_pipeline": round(sum(pipeline) / len(asked), 4),
              "difference": round(difference, 4), "tolerance": tolerance,
              "prefix_agreement": wording["prefix_agreement"], "min_prefix_agreement": min_agreement,
              "passed": abs(difference) <= tolerance and wording["prefix_agreement"] >= min_agreement,
              "samples": [{"question": q, "export": a, "pipeline": recorded[q]} for q, a in pairs[:3]]}
    log.info("smoke test of %s: %s", gguf.name, {k: v for k, v in result.items() if k != "samples"})
    return result
