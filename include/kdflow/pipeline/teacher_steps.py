"""Teacher steps: the held-out set, each cycle's new questions, and grounded reference answers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from kdflow.bank import held_out_key, question_bank
from kdflow.kb import load_from_config
from kdflow.pipeline.artifacts import (
    allocate_questions,
    run_questions,
    start_record,
    teacher_session,
    usage_key,
)
from kdflow.pipeline.context import RunContext
from kdflow.records import Question

if TYPE_CHECKING:
    from kdflow.llm.server import Endpoint
    from kdflow.teacher.faithfulness import SentenceJudge

log = logging.getLogger(__name__)


def prepare_held_out_questions(ctx: RunContext, cycle: None) -> dict[str, Any]:
    """Make sure the store's held-out set has enough questions for every selected topic, then
    publish this run's slice of it."""
    from kdflow.llm.batch import IndependentParts
    from kdflow.teacher.questions import generate_questions

    size = ctx.config.pipeline.held_out_per_topic
    kb = load_from_config(ctx.config)
    key = held_out_key(kb.content_hash)
    bank = [Question.model_validate(r) for r in ctx.store.read_jsonl(key)] if ctx.store.exists(key) else []
    missing = {t: size - sum(q.topic == t for q in bank) for t in ctx.config.pipeline.topics}
    missing = {t: n for t, n in missing.items() if n > 0}
    if missing:
        existing = question_bank(ctx.store, kb.content_hash, run_id=ctx.run_id, before_cycle=1)
        existing += [q.question for q in bank]
        bank_size = len(existing)
        with teacher_session(ctx, None, "held_out_questions") as (endpoint, client), IndependentParts() as topics:
            for topic, count in missing.items():
                with topics.part():
                    new = generate_questions(client, endpoint, ctx.config.teacher, kb, topic, count,
                                             existing=existing, seed=ctx.config.seed, cycle=None, split="held_out",
                                             bank_size=bank_size)
                    existing += [q.question for q in new]
                    bank += new
        ctx.store.write_jsonl(key, bank)
        log.info("held-out set %s now has %d questions", key, len(bank))
    selected = []
    for topic in ctx.config.pipeline.topics:
        selected += [q for q in bank if q.topic == topic][:size]
    _prepare_gold(ctx)
    pointer = ctx.stage_rows(None, "held_out.jsonl", selected)
    return ctx.publish(None, "held_out.jsonl", pointer, schema="held_out").to_xcom()


def _prepare_gold(ctx: RunContext) -> None:
    """Publish this run's copy of the gold set (the second held-out split, written independently of
    the teacher) and, with ``evaluation.teacher_ceiling``, the teacher's open-book answers to it
    scored like the student's: the ceiling of the report's verdict."""
    from kdflow.evaluation.metrics import score_gold_answers
    from kdflow.gold import scored_gold, stratified_sample, validated_gold

    gold = validated_gold(ctx.config)
    if gold is None:
        return
    items = gold.for_topics(ctx.config.pipeline.topics)
    ctx.publish(None, "gold.jsonl", ctx.stage_rows(None, "gold.jsonl", items, summary={"path": gold.path}))
    scored = scored_gold(ctx.config, items)
    log.info("gold set %s: %d items for topics %s, the student scored on %s", gold.path, len(items),
             ", ".join(ctx.config.pipeline.topics), "all" if scored == items else f"a sample of {len(scored)}")
    if not ctx.config.evaluation.teacher_ceiling:
        return
    from kdflow.llm.cache import UsageLedger
    from kdflow.retrieval import Retriever
    from kdflow.teacher.references import generate_references

    items = stratified_sample(scored, ctx.config.evaluation.ceiling_per_topic, seed=ctx.config.seed, purpose="ceiling")
    questions = [item.as_question() for item in items]
    retriever = Retriever(load_from_config(ctx.config), ctx.store)
    with teacher_session(ctx, None, "gold_ceiling") as (endpoint, client):
        references = generate_references(client, endpoint, ctx.config.teacher, retriever, questions,
                                          top_k=ctx.config.knowledge_base.retrieval_top_k)
    rows = [{"question_id": r.question_id, "topic": q.topic, "split": "gold", "question": q.question,
             "answer": r.reference}
            for q, r in zip(questions, references, strict=True)]
    scores = score_gold_answers(ctx.config.evaluation, rows, items, store=ctx.store, ledger=UsageLedger(), cycle=0,
                                stage="finetuned")
    ceiling = [{**row, "mode": ref.mode, "scores": score.scores}
               for row, ref, score in zip(rows, references, scores, strict=True)]
    ctx.publish(None, "gold_ceiling.jsonl", ctx.stage_rows(None, "gold_ceiling.jsonl", ceiling))


def generate_questions(ctx: RunContext, cycle: int) -> dict[str, Any]:
    """New questions for this cycle, spread over the topics, never repeating the bank."""
    from kdflow.llm.batch import IndependentParts
    from kdflow.teacher.questions import generate_questions as teacher_questions

    kb = load_from_config(ctx.config)
    existing = list(start_record(ctx, cycle)["question_bank"])
    bank_size = len(existing)
    allocation = allocate_questions(ctx.config.pipeline.topics, ctx.config.pipeline.questions_per_cycle, cycle)
    citations = passage_citations(ctx, before_cycle=cycle)
    questions: list[Question] = []
    with teacher_session(ctx, cycle, "questions") as (endpoint, client), IndependentParts() as topics:
        for topic, count in allocation.items():
            with topics.part():  # a batch round asks for every topic's drafts at once
                new = teacher_questions(client, endpoint, ctx.config.teacher, kb, topic, count, existing=existing,
                                        seed=ctx.config.seed, cycle=cycle, citations=citations, bank_size=bank_size)
                existing += [q.question for q in new]
                questions += new
    for q in questions:
        log.info("cycle %d question [%s]: %s", cycle, q.topic, q.question)
    return ctx.stage_rows(cycle, "questions.jsonl", questions, summary={"allocation": allocation}).to_xcom()


def passage_citations(ctx: RunContext, before_cycle: int) -> dict[str, int]:
    """Passage id -> how many of this run's questions of cycles before ``before_cycle`` cite it."""
    counts: dict[str, int] = {}
    for n in range(1, before_cycle):
        for row in ctx.rows(ctx.checkpoint(n, "questions.jsonl")):
            for pid in row["passage_ids"]:
                counts[pid] = counts.get(pid, 0) + 1
    return counts


def generate_reference_answers(ctx: RunContext, cycle: int) -> dict[str, Any]:
    """Grounded references for the cycle's questions and the held-out set (cached across cycles)."""
    from kdflow.retrieval import Retriever
    from kdflow.teacher.references import generate_references

    questions = run_questions(ctx, cycle)
    retriever = Retriever(load_from_config(ctx.config), ctx.store)
    session = teacher_session(ctx, cycle, "references")
    with session as (endpoint, client), reference_judge(ctx, cycle, endpoint) as judge:
        references = generate_references(client, endpoint, ctx.config.teacher, retriever, questions,
                                         top_k=ctx.config.knowledge_base.retrieval_top_k, judge=judge)
    modes = {m: sum(r.mode == m for r in references) for m in ("abstractive", "extractive")}
    decisions: dict[str, int] = {}
    for r in references:
        decisions[r.gate.get("decision", "none")] = decisions.get(r.gate.get("decision", "none"), 0) + 1
    return ctx.stage_rows(cycle, "references.jsonl", references, summary={"modes": modes, "gate": decisions}).to_xcom()


@contextmanager
def reference_judge(ctx: RunContext, cycle: int, endpoint: Endpoint) -> Iterator[SentenceJudge | None]:
    """The LLM faithfulness check of the reference gate (``teacher.gate.llm_check``), or None;
    its calls are counted as judge usage."""
    if not ctx.config.teacher.gate.llm_check:
        yield None
        return
    from kdflow.llm.cache import UsageLedger
    from kdflow.teacher.faithfulness import ragas_sentence_judge

    ledger = UsageLedger.from_config(ctx.config.teacher)
    try:
        yield ragas_sentence_judge(ctx.config.evaluation, endpoint, store=ctx.store, ledger=ledger)
    finally:
        ledger.save(ctx.store, usage_key(ctx, cycle, "reference_judge"))
