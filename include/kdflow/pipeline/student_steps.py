"""Student steps: device plan and load check, baseline and fine-tuned answers, the training
dataset, and fine-tuning. Each loads the model fresh and frees it when done (the diagram's
memory management); adapters travel through the store."""

from __future__ import annotations

import logging
import re
import tempfile
from collections import Counter
from collections.abc import Container, Iterable
from pathlib import Path
from typing import Any

from kdflow.gold import scored_gold
from kdflow.kb import KnowledgeBase, load_from_config
from kdflow.pipeline.artifacts import (
    gold_answered_at,
    run_gold,
    run_questions,
    start_adapter,
    student_base,
    student_model_path,
)
from kdflow.pipeline.context import CheckpointError, RunContext
from kdflow.pipeline.review import ReviewDecision, reviewer_drops
from kdflow.records import Answer, Reference, TrainingPair, gate_drop_reason
from kdflow.store import Pointer

# A passage pair in the ``sentences`` form is ``passage:<passage id>@<k>``; passage ids hold '#' already.
_SENTENCE_PAIR_SUFFIX = re.compile(r"@\d+$")

log = logging.getLogger(__name__)


def _adapter_dir(ctx: RunContext, adapter: Pointer | dict[str, Any] | None, workdir: str) -> Path | None:
    if adapter is None:
        return None
    return ctx.store.download_dir(adapter, Path(workdir) / "adapter")


def _check_load(ctx: RunContext, cycle: int, adapter: Pointer | None, name: str) -> dict[str, Any]:
    """Make the device plan, check the model (plus adapter) loads, free it, record both."""
    from kdflow.student.device import plan_device, release_memory
    from kdflow.student.models import load_student

    plan = plan_device(ctx.config.student, "answer")
    base = student_base(ctx)
    with tempfile.TemporaryDirectory(prefix="kdflow-load-") as tmp:
        model, _tokenizer = load_student(student_model_path(ctx, base), plan, _adapter_dir(ctx, adapter, tmp))
        parameters = sum(p.numel() for p in model.parameters())
        memory = release_memory(model)
        del model
    record = {"model": base["base_model"], "adapter": ctx.store.folder_url(adapter) if adapter else None,
              "plan": plan.model_dump(), "parameters": parameters, "memory": memory}
    summary = {"device": plan.device, "quantization": plan.quantization, "adapter": record["adapter"]}
    return ctx.publish_json(cycle, name, record, summary=summary).to_xcom()


def load_student_model(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return _check_load(ctx, cycle, start_adapter(ctx, cycle), "baseline_model.json")


def load_finetuned_model(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return _check_load(ctx, cycle, ctx.checkpoint(cycle, "adapter"), "finetuned_model.json")


def _answer(ctx: RunContext, cycle: int, adapter: Pointer | None, stage: str) -> dict[str, Any]:
    """Answer the cycle's questions, the held-out set and (where :func:`gold_answered_at`) the gold
    set in one batched pass; the staged answers' summary records the device plan, tokens/s, wall time and
    memory before/after. Where the run starts from a student that read the knowledge base (and no
    champion adapter), cycle 1's baseline also answers the gold set with the configured student as it
    was before reading (stage ``unread``): the run's own measurement of what reading changed."""
    from kdflow.student.device import plan_device
    from kdflow.student.generate import answer_questions
    from kdflow.student.models import resolve_student

    questions = run_questions(ctx, cycle)
    budgets = [ctx.config.student.max_new_tokens] * len(questions)
    gold = [item.as_question() for item in scored_gold(ctx.config, run_gold(ctx))] if gold_answered_at(cycle, stage) \
        else []
    questions += gold
    budgets += [ctx.config.evaluation.gold_max_new_tokens] * len(gold)
    plan, base = plan_device(ctx.config.student, "answer"), student_base(ctx)
    with tempfile.TemporaryDirectory(prefix="kdflow-answer-") as tmp:
        answers = answer_questions(ctx.config.student, student_model_path(ctx, base),
                                   [q.question for q in questions], adapter_dir=_adapter_dir(ctx, adapter, tmp),
                                   plan=plan, max_new_tokens=budgets)
    adapter_url = ctx.store.folder_url(adapter) if adapter else None  # no version: a rerun's rows stay identical
    rows = [
        Answer(question_id=q.id, question=q.question, answer=a.text, stage=stage, split=q.split,
               model=base["base_model"], adapter=adapter_url, new_tokens=a.new_tokens)
        for q, a in zip(questions, answers, strict=True)
    ]
    # The device plan and the generation stats travel with the answers (#4), as training's do with the adapter.
    stats = answers.stats.model_dump(mode="json", exclude={"adapter"})
    summary = {**stats, "device": plan.device, "adapter": adapter_url}
    if gold and base["read"] and adapter is None and stage == "baseline":
        unread = answer_questions(ctx.config.student, resolve_student(ctx.config.student.model),
                                  [q.question for q in gold], plan=plan,
                                  max_new_tokens=[ctx.config.evaluation.gold_max_new_tokens] * len(gold))
        rows += [Answer(question_id=q.id, question=q.question, answer=a.text, stage="unread", split=q.split,
                        model=ctx.config.student.model, adapter=None, new_tokens=a.new_tokens)
                 for q, a in zip(gold, unread, strict=True)]
        summary["unread_wall_s"] = unread.stats.wall_s
    return ctx.stage_rows(cycle, f"{stage}_answers.jsonl", rows, summary=summary).to_xcom()


def generate_baseline_answers(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return _answer(ctx, cycle, start_adapter(ctx, cycle), "baseline")


def generate_finetuned_answers(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return _answer(ctx, cycle, ctx.checkpoint(cycle, "adapter"), "finetuned")


def trainable_references(
    references: Iterable[Reference], train_ids: Container[str]
) -> tuple[list[Reference], list[dict[str, str]]]:
    """The references that may become training pairs: those of ``train_ids`` (held-out questions
    are evaluated, never trained on) that the gate did not drop; plus ``{"question_id",
    "question", "reason"}`` of each dropped one."""
    kept: list[Reference] = []
    dropped: list[dict[str, str]] = []
    for ref in references:
        if ref.question_id not in train_ids:
            continue
        reason = gate_drop_reason(ref)
        if reason is None:
            kept.append(ref)
        else:
            dropped.append({"question_id": ref.question_id, "question": ref.question, "reason": reason})
    return kept, dropped


def evaluation_questions(ctx: RunContext) -> list[str]:
    """The questions the student is evaluated on and must never train on: gold and held-out."""
    texts = [item.question for item in run_gold(ctx)]
    if ctx.has_checkpoint(None, "held_out.jsonl"):
        texts += [row["question"] for row in ctx.rows(ctx.checkpoint(None, "held_out.jsonl"))]
    return texts


def decontaminate(
    pairs: list[TrainingPair], protected: list[str], threshold: float
) -> tuple[list[TrainingPair], list[dict[str, Any]]]:
    """Leave out every pair whose question has MiniLM cosine >= ``threshold`` to a protected
    (evaluation) question; returns the kept pairs and ``{"cycle", "question_id", "question",
    "closest", "similarity"}`` of each left out."""
    if not pairs or not protected:
        return pairs, []
    from kdflow.embeddings import embed

    similarity = embed([p.prompt for p in pairs]) @ embed(protected).T
    kept, removed = [], []
    for pair, row in zip(pairs, similarity, strict=True):
        best = int(row.argmax())
        if float(row[best]) >= threshold:
            removed.append({"cycle": pair.cycle, "question_id": pair.question_id, "question": pair.prompt,
                            "closest": protected[best], "similarity": round(float(row[best]), 4)})
        else:
            kept.append(pair)
    return kept, removed


def passage_pairs(ctx: RunContext, kb: KnowledgeBase, pairs: list[TrainingPair],
                  cited: dict[str, list[str]]) -> list[TrainingPair]:
    """One pair per knowledge-base passage, the passage's own words as the answer to "what does the
    documentation say about <section>?": with ``student.passage_pairs: cited`` each passage the
    training questions cite, in first-cited order; with ``all`` every passage of the selected topics
    (counted as cycle 1's, as they are the same in every cycle), so the student reads facts the
    teacher's references do not state. With ``student.passage_form: sentences`` a passage gives one
    pair per two sentences, ``passage:<id>@<k>``."""
    first_cycle: dict[str, int] = {}
    if ctx.config.student.passage_pairs == "all":
        first_cycle = {p.id: 1 for topic in ctx.config.pipeline.topics for p in kb.passages_for(topic)}
    for pair in pairs:
        for pid in cited.get(pair.question_id, []):
            first_cycle.setdefault(pid, pair.cycle)
    extra = []
    form = ctx.config.student.passage_form
    for pid, cycle in first_cycle.items():
        passage = kb.by_id(pid)
        for k, (prompt, completion) in enumerate(passage.training_pairs(kb.name, form)):
            extra.append(TrainingPair(question_id=f"passage:{pid}" + (f"@{k + 1}" if form == "sentences" else ""),
                                      cycle=cycle, topic=passage.topic, prompt=prompt, completion=completion))
    return extra


def kb_coverage(ctx: RunContext, kb: KnowledgeBase, cited_passages: list[str]) -> dict[str, Any]:
    """Passages of the selected topics that at least one training pair cites, over all of them."""
    selected = {p.id for t in ctx.config.pipeline.topics for p in kb.passages_for(t)}
    covered = selected & set(cited_passages)
    return {"passages_covered": len(covered), "passages": len(selected), "share": len(covered) / len(selected)}


def drop_reviewed(pairs: list[TrainingPair], drops: dict[str, ReviewDecision]) -> tuple[list[TrainingPair],
                                                                                      list[dict[str, Any]]]:
    """``pairs`` less those a dataset review dropped; plus ``{"cycle", "question_id", "question", "by", "at",
    "timed_out"}`` of each, naming who dropped it and when."""
    kept, removed = [], []
    for pair in pairs:
        review = drops.get(pair.question_id)
        if review is None:
            kept.append(pair)
        else:
            removed.append({"cycle": pair.cycle, "question_id": pair.question_id, "question": pair.prompt,
                            "by": review.by, "at": review.at, "review_cycle": review.cycle})
    return kept, removed


def prepare_training_dataset(ctx: RunContext, cycle: int) -> dict[str, Any]:
    """Every gated training pair of cycles 1..n of this run (of cycle n alone with ``pipeline.training_pairs: new``),
    less those a reviewer dropped (``review.dataset``)
    and those too close to a gold or held-out question (decontamination); evaluation questions never enter.
    Records the KB coverage and who dropped what."""
    pairs: list[TrainingPair] = []
    dropped: list[dict[str, Any]] = []
    questions_cited: dict[str, list[str]] = {}  # question id -> the passages it cites
    kb = load_from_config(ctx.config)  # once: read by the passage pairs and the coverage
    first = 1 if ctx.config.pipeline.training_pairs == "all" else cycle  # "new": this cycle's pairs only
    for n in range(first, cycle + 1):
        questions = {q["id"]: q for q in ctx.rows(ctx.checkpoint(n, "questions.jsonl"))}
        references = [Reference.model_validate(row) for row in ctx.rows(ctx.checkpoint(n, "references.jsonl"))]
        kept, cut = trainable_references(references, questions)
        dropped += [{"cycle": n, **d} for d in cut]
        questions_cited.update({ref.question_id: questions[ref.question_id]["passage_ids"] for ref in kept})
        pairs += [TrainingPair(question_id=ref.question_id, cycle=n, topic=questions[ref.question_id]["topic"],
                               prompt=ref.question, completion=ref.reference) for ref in kept]
    drops = reviewer_drops(ctx.store, ctx.run_id, cycle)
    pairs, reviewed_out = drop_reviewed(pairs, drops)  # before the passage pairs: a dropped pair cites nothing
    cited = {p.question_id: questions_cited[p.question_id] for p in pairs}
    if ctx.config.student.passage_pairs != "off":
        extra, passages_out = drop_reviewed(passage_pairs(ctx, kb, pairs, cited), drops)
        pairs, reviewed_out = pairs + extra, reviewed_out + passages_out
    threshold = ctx.config.evaluation.decontamination_similarity
    pairs, decontaminated = decontaminate(pairs, evaluation_questions(ctx), threshold)
    if not pairs:
        raise CheckpointError(f"cycle {cycle}: the training dataset has zero pairs "
                              f"({len(dropped)} dropped by the gate, {len(reviewed_out)} by a reviewer, "
                              f"{len(decontaminated)} too close to an evaluation question)")
    reasons = dict(Counter(d["reason"] for d in dropped))
    coverage = kb_coverage(ctx, kb, [pid for p in pairs for pid in cited.get(p.question_id, [])])
    log.info("cycle %d training dataset: %d pairs, %d dropped by the gate %s, %d by a reviewer, %d decontaminated; "
             "KB coverage %d/%d", cycle, len(pairs), len(dropped), reasons, len(reviewed_out), len(decontaminated),
             coverage["passages_covered"], coverage["passages"])
    summary = {"pairs": len(pairs), "dropped": len(dropped), "dropped_reasons": reasons, "dropped_items": dropped[:20],
               "decontaminated": decontaminated, "coverage": coverage, "reviewer_dropped": reviewed_out}
    summary["hf_dataset"] = publish_hf_dataset(ctx, cycle, pairs, cited, summary).to_xcom()
    pointer = ctx.store.write_jsonl(ctx.key(cycle, "dataset.jsonl"), pairs, summary=summary)
    ctx.record(cycle, "dataset.jsonl", pointer)
    return pointer.to_xcom()


def _source_passages(pair: TrainingPair, cited: dict[str, list[str]]) -> list[str]:
    """The KB passages a pair comes from: its question's, or the passage itself for a passage pair."""
    if pair.question_id.startswith("passage:"):
        return [_SENTENCE_PAIR_SUFFIX.sub("", pair.question_id.removeprefix("passage:"))]
    return cited.get(pair.question_id, [])


def publish_hf_dataset(ctx: RunContext, cycle: int, pairs: list[TrainingPair], cited: dict[str, list[str]],
                       summary: dict[str, Any]) -> Pointer:
    """The cycle's pairs (with their source passages) and the run's evaluation sets as a Hugging Face
    dataset folder (:mod:`kdflow.student.dataset`); the fine-tuning step trains on its ``train.parquet``."""
    from kdflow.student.dataset import dataset_card, write_dataset_folder

    train = [{**pair.model_dump(), "passage_ids": _source_passages(pair, cited)} for pair in pairs]
    held_out = ctx.rows(ctx.checkpoint(None, "held_out.jsonl")) if ctx.has_checkpoint(None, "held_out.jsonl") else []
    splits = {"train": train, "gold": [item.model_dump() for item in run_gold(ctx)], "held_out": held_out}
    teacher = ctx.config.teacher
    card = dataset_card(
        kb_name=ctx.config.knowledge_base.name, topics=ctx.config.pipeline.topics, cycle=cycle, pairs=len(pairs),
        teacher="SmolLM2-135M-Instruct (embedded)" if teacher.provider == "embedded" else teacher.model,
        splits={name: len(rows) for name, rows in splits.items()}, gate=summary,
        decontaminated=len(summary["decontaminated"]), coverage=summary["coverage"])
    with tempfile.TemporaryDirectory(prefix="kdflow-dataset-") as tmp:
        pointer = ctx.store.upload_dir(write_dataset_folder(Path(tmp), splits, card), ctx.key(cycle, "hf_dataset"),
                                       summary={name: len(rows) for name, rows in splits.items()})
    ctx.record(cycle, "hf_dataset", pointer)
    ctx.store.retire_versions(pointer)
    return pointer


def finetune_student(ctx: RunContext, cycle: int) -> dict[str, Any]:
    """LoRA/QLoRA on the accumulated pairs, continuing from the adapter the cycle started from
    (one retry with a smaller batch or on the CPU after a CUDA out-of-memory error, recorded)."""
    from kdflow.student.dataset import TRAIN_FILE, load_training_pairs
    from kdflow.student.device import plan_device
    from kdflow.student.kb_reading import cycles_settings
    from kdflow.student.train import train_with_oom_fallback

    # the published checkpoint, not the dataset step's XCom: a dataset review that drops pairs republishes it
    folder = ctx.checkpoint(cycle, "hf_dataset")
    plan, base = plan_device(ctx.config.student, "train"), student_base(ctx)
    settings = cycles_settings(ctx.config.student, base["read"])
    with tempfile.TemporaryDirectory(prefix="kdflow-train-") as tmp:
        parquet = Path(tmp) / TRAIN_FILE
        parquet.write_bytes(ctx.store.folder_file(folder, TRAIN_FILE))  # hash-checked against the folder marker
        result = train_with_oom_fallback(settings, student_model_path(ctx, base),
                                         load_training_pairs(parquet), Path(tmp) / "out",
                                         init_adapter_dir=_adapter_dir(ctx, start_adapter(ctx, cycle), tmp), plan=plan,
                                         seed=ctx.config.seed + cycle)
        summary = {"steps": result.steps, "final_loss": result.final_loss, "initial_loss": result.initial_loss,
                   "wall_s": result.wall_s, "device": result.plan.device, "pairs": result.pairs,
                   "oom_fallback": result.oom_fallback and result.oom_fallback["change"]}
        pointer = ctx.store.upload_dir(Path(tmp) / "out", ctx.staging_key(cycle, "adapter"), summary=summary)
        ctx.store.retire_versions(pointer)  # a rerun's staged adapter: the earlier try's XCom is gone
    log.info("cycle %d fine-tuned on %d pairs: loss %.3f -> %.3f in %.1fs", cycle, result.pairs,
             result.initial_loss, result.final_loss, result.wall_s)
    return pointer.to_xcom()
