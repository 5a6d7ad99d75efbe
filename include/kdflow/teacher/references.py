"""Reference answers written with the most relevant passages in context and nothing else, then
gated for faithfulness to those passages.

The teacher is told to answer only from the passages, which are saved beside the reference, so
even a teacher the size of the student is a real teacher: it answers open-book while the
student answers closed-book. The question's own source passage is always among them.

A small teacher still invents facts with the passage in context (issue #10), and the student
learns whatever it is given, so every draft goes through :func:`review_reference`: unsupported
sentences are cut, a draft with too little left is asked for again, and after
``gate.reference_attempts`` drafts the reference is built from the passage sentences closest to
the question (``mode="extractive"``). Each decision is recorded in ``Reference.gate``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from kdflow.config import GateConfig, TeacherConfig
from kdflow.kb import Passage, split_sentences
from kdflow.llm.batch import map_round
from kdflow.llm.server import Endpoint
from kdflow.records import Question, Reference
from kdflow.retrieval import Retriever
from kdflow.teacher.faithfulness import PassageSentences, SentenceJudge
from kdflow.teacher.structured import UnusableReplyError, complete_json

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

# References favour faithfulness over variety: the teacher samples at most this temperature.
REFERENCE_MAX_TEMPERATURE = 0.2

SYSTEM_PROMPT = (
    "You answer questions about {kb_name} using ONLY the passages given. "
    "If the passages do not contain the answer, say that they do not."
)
USER_PROMPT = ("Passages:\n{passages}\n\nQuestion: {question}\n"
               "Answer in one to three sentences, using only the passages.")
# Sent instead on a regeneration: the first draft said things the passages do not.
RETRY_PROMPT = (
    "Passages:\n{passages}\n\nQuestion: {question}\n"
    "Answer in one or two sentences that repeat what the passages say, with their words. Add nothing else."
)


class ReferenceDraft(BaseModel):
    answer: str = Field(min_length=1)  # no maxLength: llama.cpp turns it into a grammar too large to parse


def context_passages(retriever: Retriever, question: Question, top_k: int) -> list[Passage]:
    """The question's source passages first, then the closest retrieved ones, ``top_k`` in all."""
    chosen: dict[str, Passage] = {}
    for pid in question.passage_ids:
        chosen[pid] = retriever.kb.by_id(pid)
    for passage, _score in retriever.search(question.question, top_k, topic=question.topic):
        chosen.setdefault(passage.id, passage)
    return list(chosen.values())[: max(top_k, len(question.passage_ids))]


def reference_messages(kb_name: str, question: str, passages: list[Passage], *,
                       retry: bool = False) -> list[dict[str, str]]:
    listed = "\n\n".join(f"[{i + 1}] {p.text}" for i, p in enumerate(passages))
    return [
        {"role": "system", "content": SYSTEM_PROMPT.format(kb_name=kb_name)},
        {"role": "user",
         "content": (RETRY_PROMPT if retry else USER_PROMPT).format(passages=listed, question=question)},
    ]


@dataclass(frozen=True)
class ReviewedReference:
    text: str
    mode: Literal["abstractive", "extractive"]
    gate: dict[str, Any]


def _review_draft(
    text: str, question: str, support: PassageSentences, gate: GateConfig, judge: SentenceJudge | None
) -> dict[str, Any]:
    sentences = split_sentences(text)
    scored = support.score(sentences)
    if judge is not None and scored:
        scored = [replace(s, llm=v) for s, v in zip(scored, judge(question, sentences, support.passages), strict=True)]
    kept = [s.text for s in scored if s.supported(gate.support_floor, gate.llm_floor)]
    return {
        "draft": text,
        "kept": kept,
        "kept_share": round(len(kept) / len(scored), 4) if scored else 0.0,
        "sentences": [s.record(gate.support_floor, gate.llm_floor) for s in scored],
    }


def review_reference(
    question: str,
    passages: Sequence[str],
    draft: Callable[[int], str],
    gate: GateConfig,
    judge: SentenceJudge | None = None,
) -> ReviewedReference:
    """Gate the teacher's drafts (``draft(attempt)``) against ``passages``; the outcome records
    the decision (kept / rewritten / regenerated / extractive / dropped), its reason and scores."""
    support = PassageSentences(passages)
    reviews: list[dict[str, Any]] = []
    for attempt in range(gate.reference_attempts if gate.reference_mode != "extractive" else 0):
        review = _review_draft(" ".join(draft(attempt).split()), question, support, gate, judge)
        reviews.append(review)
        if review["kept"] and review["kept_share"] >= gate.min_kept_share:
            cut = len(review["sentences"]) - len(review["kept"])
            decision = "regenerated" if attempt else ("rewritten" if cut else "kept")
            reason = (f"{cut} unsupported sentence(s) removed" if cut else "every sentence supported") + (
                f" (draft {attempt + 1}; earlier drafts kept too little)" if attempt else "")
            record = _record(decision, reason, gate, reviews, kept_share=review["kept_share"])
            return ReviewedReference(" ".join(review["kept"]), "abstractive", record)
    sentences, best = support.closest_to(question, gate.extractive_sentences)
    extractive = " ".join(sentences)
    last_draft = next((r["draft"] for r in reversed(reviews) if r["draft"]), "")
    scores = {"question_similarity": round(best, 4)}
    why = (f"no draft kept {gate.min_kept_share:.0%} of its sentences at support >= {gate.support_floor} "
           f"after {len(reviews)} attempt(s)") if reviews else "reference_mode is extractive"
    if gate.reference_mode == "abstractive":
        return ReviewedReference(last_draft or extractive, "abstractive",
                                 _record("dropped", why, gate, reviews, **scores))
    if not sentences or best < gate.extractive_floor:
        reason = f"{why}; no passage sentence answers the question (best cosine {best:.2f} < {gate.extractive_floor})"
        text = extractive or last_draft or question  # kept for the record; a dropped reference is never trained on
        return ReviewedReference(text, "extractive", _record("dropped", reason, gate, reviews, **scores))
    return ReviewedReference(extractive, "extractive", _record("extractive", why, gate, reviews, **scores))


def _record(decision: str, reason: str, gate: GateConfig, reviews: list[dict[str, Any]],
            **scores: float) -> dict[str, Any]:
    return {
        "decision": decision,
        "reason": reason,
        "reference_mode": gate.reference_mode,
        "attempts": len(reviews),
        "support_floor": gate.support_floor,
        "scores": scores,
        "drafts": [{k: v for k, v in r.items() if k != "kept"} for r in reviews],
    }


def generate_reference(
    client: openai.OpenAI,
    endpoint: Endpoint,
    cfg: TeacherConfig,
    retriever: Retriever,
    question: Question,
    *,
    top_k: int,
    judge: SentenceJudge | None = None,
) -> Reference:
    """One gated reference. Draft 1 is the plain request (cache-compatible with earlier runs);
    later drafts use the stricter prompt and their own seed, so a rerun replays them from the cache."""
    passages = context_passages(retriever, question, top_k)

    def draft(attempt: int) -> str:
        try:
            reply = complete_json(
                client, endpoint, reference_messages(retriever.kb.name, question.question, passages, retry=attempt > 0),
                ReferenceDraft, temperature=min(cfg.temperature, REFERENCE_MAX_TEMPERATURE), max_tokens=cfg.max_tokens,
                seed=attempt if attempt else None,
            )
        except UnusableReplyError as exc:  # an endpoint down, a timeout or a refusal fails the task (Airflow retries)
            log.warning("reference draft %d for %s unusable, counted as unsupported: %s", attempt + 1, question.id, exc)
            return ""  # e.g. SmolLM2 looping until max_tokens: a failed draft, not a failed task
        return reply.answer

    reviewed = review_reference(question.question, [p.text for p in passages], draft, cfg.gate, judge)
    return Reference(
        question_id=question.id,
        question=question.question,
        reference=reviewed.text,
        passages=[{"id": p.id, "text": p.text} for p in passages],
        mode=reviewed.mode,
        gate=reviewed.gate,
    )


def generate_references(
    client: openai.OpenAI,
    endpoint: Endpoint,
    cfg: TeacherConfig,
    retriever: Retriever,
    questions: list[Question],
    *,
    top_k: int,
    judge: SentenceJudge | None = None,
) -> list[Reference]:
    """One gated reference per question, in question order; ``cfg.concurrency`` calls at once.
    ``judge`` adds the LLM check (see :func:`kdflow.teacher.faithfulness.ragas_sentence_judge`)."""

    def one(question: Question) -> Reference:
        return generate_reference(client, endpoint, cfg, retriever, question, top_k=top_k, judge=judge)

    if cfg.concurrency <= 1 or len(questions) <= 1:
        return [one(q) for q in questions]
    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        return map_round(pool, one, questions)
