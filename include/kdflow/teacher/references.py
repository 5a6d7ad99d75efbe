"""Reference answers written with the most relevant passages in context and nothing else.

The teacher is told to answer only from the passages, which are saved beside the reference, so
even a teacher the size of the student is a real teacher: it answers open-book while the
student answers closed-book. The question's own source passage is always among them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, Field

from kdflow.kb import Passage
from kdflow.records import Question, Reference
from kdflow.retrieval import Retriever
from kdflow.teacher.structured import complete_json

# References favour faithfulness over variety: the teacher samples at most this temperature.
REFERENCE_MAX_TEMPERATURE = 0.2

SYSTEM_PROMPT = (
    "You answer questions about {kb_name} using ONLY the passages given. "
    "If the passages do not contain the answer, say that they do not."
)
USER_PROMPT = "Passages:\n{passages}\n\nQuestion: {question}\nAnswer in one to three sentences, using only the passages."


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


def reference_messages(kb_name: str, question: str, passages: list[Passage]) -> list[dict[str, str]]:
    listed = "\n\n".join(f"[{i + 1}] {p.text}" for i, p in enumerate(passages))
    return [
        {"role": "system", "content": SYSTEM_PROMPT.format(kb_name=kb_name)},
        {"role": "user", "content": USER_PROMPT.format(passages=listed, question=question)},
    ]


def generate_reference(client: Any, endpoint: Any, cfg: Any, retriever: Retriever, question: Question, *, top_k: int) -> Reference:
    passages = context_passages(retriever, question, top_k)
    draft = complete_json(
        client, endpoint, reference_messages(retriever.kb.name, question.question, passages), ReferenceDraft,
        temperature=min(cfg.temperature, REFERENCE_MAX_TEMPERATURE), max_tokens=cfg.max_tokens,
    )  # fmt: skip
    return Reference(
        question_id=question.id,
        question=question.question,
        reference=" ".join(draft.answer.split()),
        passages=[{"id": p.id, "text": p.text} for p in passages],
        mode="abstractive",
    )


def generate_references(
    client: Any, endpoint: Any, cfg: Any, retriever: Retriever, questions: list[Question], *, top_k: int
) -> list[Reference]:
    """One grounded reference per question, in question order; ``cfg.concurrency`` calls at once."""
    if cfg.concurrency <= 1 or len(questions) <= 1:
        return [generate_reference(client, endpoint, cfg, retriever, q, top_k=top_k) for q in questions]
    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        return list(pool.map(lambda q: generate_reference(client, endpoint, cfg, retriever, q, top_k=top_k), questions))
