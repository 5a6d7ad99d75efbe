"""Teacher steps: the held-out set, each cycle's new questions, and grounded reference answers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kdflow.pipeline.context import RunContext
from kdflow.records import Question
from kdflow.store import run_key

log = logging.getLogger(__name__)


def held_out_key(ctx: RunContext) -> str:
    """The store-wide held-out set: fixed per knowledge-base version, never trained on."""
    from kdflow.kb import load_from_config

    return f"held_out/{load_from_config(ctx.config).content_hash}/questions.jsonl"


def usage_key(ctx: RunContext, cycle: int | None, task: str) -> str:
    return run_key(ctx.run_id, "usage", f"{'run' if cycle is None else f'cycle_{cycle}'}__{task}.json")


@contextmanager
def endpoint_session(ctx: RunContext, cycle: int | None, task: str) -> Iterator[tuple[Any, Any]]:
    """A live teacher/judge endpoint and a usage ledger, saved even when the task fails."""
    from kdflow.llm.cache import UsageLedger
    from kdflow.llm.server import teacher_endpoint

    ledger = UsageLedger.from_config(ctx.config.teacher)
    try:
        with teacher_endpoint(ctx.config.teacher) as endpoint:
            yield endpoint, ledger
    finally:
        pointer = ledger.save(ctx.store, usage_key(ctx, cycle, task))
        log.info("%s: LLM usage %s", task, pointer.summary)


@contextmanager
def teacher_session(ctx: RunContext, cycle: int | None, task: str) -> Iterator[tuple[Any, Any]]:
    """A live endpoint and a caching client whose calls are counted under ``task``."""
    from kdflow.llm.client import make_client

    cfg = ctx.config.teacher
    with endpoint_session(ctx, cycle, task) as (endpoint, ledger):
        yield endpoint, make_client(endpoint, ctx.store, ledger, task=task, timeout_s=cfg.timeout_s,
                                    max_retries=cfg.max_retries)


def prepare_held_out_questions(ctx: RunContext, cycle: None, inputs: dict[str, Any]) -> dict[str, Any]:
    """Make sure the store's held-out set has enough questions for every selected topic, then
    publish this run's slice of it."""
    from kdflow.kb import load_from_config
    from kdflow.teacher.questions import generate_questions

    size = ctx.config.pipeline.held_out_per_topic
    key = held_out_key(ctx)
    bank = [Question.model_validate(r) for r in ctx.store.read_jsonl(key)] if ctx.store.exists(key) else []
    missing = {t: size - sum(q.topic == t for q in bank) for t in ctx.config.pipeline.topics}
    missing = {t: n for t, n in missing.items() if n > 0}
    if missing:
        from kdflow.pipeline.setup_steps import question_bank

        kb = load_from_config(ctx.config)
        existing = question_bank(ctx, before_cycle=1) + [q.question for q in bank]
        with teacher_session(ctx, None, "held_out_questions") as (endpoint, client):
            for topic, count in missing.items():
                new = generate_questions(client, endpoint, ctx.config.teacher, kb, topic, count, existing=existing,
                                         seed=ctx.config.seed, cycle=None, split="held_out")
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
    from kdflow.gold import validated_gold

    gold = validated_gold(ctx.config)
    if gold is None:
        return
    items = gold.for_topics(ctx.config.pipeline.topics)
    ctx.publish(None, "gold.jsonl", ctx.stage_rows(None, "gold.jsonl", items, summary={"path": gold.path}))
    log.info("gold set %s: %d items for topics %s", gold.path, len(items), ", ".join(ctx.config.pipeline.topics))
    if not ctx.config.evaluation.teacher_ceiling:
        return
    from kdflow.kb import load_from_config
    from kdflow.llm.cache import UsageLedger
    from kdflow.retrieval import Retriever
    from kdflow.teacher.references import generate_references

    items = ceiling_sample(items, ctx.config.evaluation.ceiling_per_topic, seed=ctx.config.seed)
    questions = [item.as_question() for item in items]
    retriever = Retriever(load_from_config(ctx.config), ctx.store)
    with teacher_session(ctx, None, "gold_ceiling") as (endpoint, client):
        references = generate_references(client, endpoint, ctx.config.teacher, retriever, questions,
                                          top_k=ctx.config.knowledge_base.retrieval_top_k)
    rows = [{"question_id": r.question_id, "topic": q.topic, "split": "gold", "question": q.question, "answer": r.reference}
            for q, r in zip(questions, references, strict=True)]
    scores = score_gold_answers(ctx.config.evaluation, rows, items, store=ctx.store, ledger=UsageLedger(), cycle=0, stage="finetuned")
    ceiling = [{**row, "mode": ref.mode, "scores": score.scores}
               for row, ref, score in zip(rows, references, scores, strict=True)]
    ctx.publish(None, "gold_ceiling.jsonl", ctx.stage_rows(None, "gold_ceiling.jsonl", ceiling))


def ceiling_sample(items: list[Any], per_topic: int | None, *, seed: int) -> list[Any]:
    """A seeded stratified sample of ``per_topic`` gold items per topic, in file order (all when None)."""
    if per_topic is None:
        return items
    import random

    from kdflow.teacher.questions import stable_int

    chosen: set[str] = set()
    for topic in dict.fromkeys(item.topic for item in items):
        ids = [item.id for item in items if item.topic == topic]
        chosen.update(random.Random(stable_int(seed, "ceiling", topic)).sample(ids, min(per_topic, len(ids))))
    return [item for item in items if item.id in chosen]


def run_gold(ctx: RunContext) -> list[Any]:
    """This run's gold items (:class:`kdflow.gold.GoldItem`), [] when the run has no gold set."""
    from kdflow.gold import GoldItem

    if not ctx.has_checkpoint(None, "gold.jsonl"):
        return []
    return [GoldItem.model_validate(row) for row in ctx.rows(ctx.checkpoint(None, "gold.jsonl"))]


def gold_answered_at(cycle: int, stage: str) -> bool:
    """The gold set is answered by the model the run starts from (cycle 1's baseline) and after
    every cycle; cycle k's baseline model is cycle k-1's adapter, already answered (greedy decoding)."""
    return stage == "finetuned" or cycle == 1


def generate_questions(ctx: RunContext, cycle: int, inputs: dict[str, Any]) -> dict[str, Any]:
    """New questions for this cycle, spread over the topics, never repeating the bank."""
    from kdflow.kb import load_from_config
    from kdflow.pipeline.setup_steps import allocate_questions, start_record
    from kdflow.teacher.questions import generate_questions as teacher_questions

    kb = load_from_config(ctx.config)
    existing = list(start_record(ctx, cycle)["question_bank"])
    allocation = allocate_questions(ctx.config.pipeline.topics, ctx.config.pipeline.questions_per_cycle, cycle)
    citations = passage_citations(ctx, before_cycle=cycle)
    questions: list[Question] = []
    with teacher_session(ctx, cycle, "questions") as (endpoint, client):
        for topic, count in allocation.items():
            new = teacher_questions(client, endpoint, ctx.config.teacher, kb, topic, count, existing=existing,
                                    seed=ctx.config.seed, cycle=cycle, citations=citations)
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


def run_questions(ctx: RunContext, cycle: int) -> list[Question]:
    """This cycle's published questions followed by the run's held-out questions."""
    rows = ctx.rows(ctx.checkpoint(cycle, "questions.jsonl"))
    if ctx.has_checkpoint(None, "held_out.jsonl"):
        rows += ctx.rows(ctx.checkpoint(None, "held_out.jsonl"))
    return [Question.model_validate(r) for r in rows]


def generate_reference_answers(ctx: RunContext, cycle: int, inputs: dict[str, Any]) -> dict[str, Any]:
    """Grounded references for the cycle's questions and the held-out set (cached across cycles)."""
    from kdflow.kb import load_from_config
    from kdflow.retrieval import Retriever
    from kdflow.teacher.references import generate_references

    questions = run_questions(ctx, cycle)
    retriever = Retriever(load_from_config(ctx.config), ctx.store)
    with teacher_session(ctx, cycle, "references") as (endpoint, client), reference_judge(ctx, cycle, endpoint) as judge:
        references = generate_references(client, endpoint, ctx.config.teacher, retriever, questions,
                                         top_k=ctx.config.knowledge_base.retrieval_top_k, judge=judge)
    modes = {m: sum(r.mode == m for r in references) for m in ("abstractive", "extractive")}
    decisions: dict[str, int] = {}
    for r in references:
        decisions[r.gate.get("decision", "none")] = decisions.get(r.gate.get("decision", "none"), 0) + 1
    return ctx.stage_rows(cycle, "references.jsonl", references, summary={"modes": modes, "gate": decisions}).to_xcom()


@contextmanager
def reference_judge(ctx: RunContext, cycle: int, endpoint: Any) -> Iterator[Any]:
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
