"""New questions grounded in the knowledge base, one per call from one passage.

A tiny teacher (SmolLM2-135M) follows "write one question about this passage" but not "write N
questions about a topic", so each call sees one passage, chosen deterministically from
(seed, cycle, topic, split, the number of questions the store already holds, slot, attempt): a
rerun sends identical requests and is served from the cache, a later run asks afresh. Every
candidate passes the question checks of :mod:`kdflow.teacher.gate` (form, duplicates of earlier
questions and of each other, answerability: the embedding floor, and the judge when
``teacher.gate.llm_check`` is on) or is asked for again, within ``max_attempts_per_question``;
the rejected drafts and their reasons are kept in ``Question.gate``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from kdflow.config import GateConfig, TeacherConfig
from kdflow.kb import KnowledgeBase, Passage, split_sentences
from kdflow.llm.batch import map_round
from kdflow.llm.server import Endpoint
from kdflow.records import Question, question_id, stable_int
from kdflow.teacher.gate import AnswerabilityJudge, DuplicateIndex, TeacherError, check_question, llm_answerability
from kdflow.teacher.structured import UnusableReplyError, complete_json

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

QUESTION_MAX_TOKENS = 96
# One interrogative sentence ending in "?", no quotes, colons or line breaks: on llama.cpp the schema
# becomes a grammar, so the tiny teacher cannot append an answer or a second question.
QUESTION_PATTERN = r"^(What|How|Why|When|Which|Who|Where|Can|Does|Do|Is|Are) [^?\n\"\\:;`{}]{8,150}\?$"

SYSTEM_PROMPT = "You write quiz questions for students of {kb_name}."
USER_PROMPT = (
    "Passage ({section}):\n{text}\n\n"
    "Write one question that can be answered from this passage. Give only the question, not the answer."
)
# teacher.questions_per_passage > 1: each question of a passage points at one of its sentences, so the
# tiny teacher asks about different facts (or the same fact in other words) instead of repeating itself.
FOCUSED_PROMPT = (
    "Passage ({section}):\n{text}\n\n"
    "Write one question that this sentence of the passage answers: \"{sentence}\"\n"
    "Give only the question, not the answer."
)


class QuestionDraft(BaseModel):
    question: str = Field(pattern=QUESTION_PATTERN)


def question_messages(kb_name: str, passage: Passage, focus: int | None = None) -> list[dict[str, str]]:
    """The request for one question on ``passage``; ``focus`` asks about its sentence ``focus``
    (modulo the passage's sentence count)."""
    if focus is None:
        prompt = USER_PROMPT.format(section=passage.section, text=passage.text)
    else:
        sentences = split_sentences(passage.text)
        prompt = FOCUSED_PROMPT.format(section=passage.section, text=passage.text,
                                       sentence=sentences[focus % len(sentences)])
    return [
        {"role": "system", "content": SYSTEM_PROMPT.format(kb_name=kb_name)},
        {"role": "user", "content": prompt},
    ]


def generate_questions(
    client: openai.OpenAI,
    endpoint: Endpoint,
    cfg: TeacherConfig,
    kb: KnowledgeBase,
    topic: str,
    n: int,
    *,
    existing: list[str],
    seed: int,
    cycle: int | None,
    split: str = "train",
    gate: GateConfig | None = None,
    judge: AnswerabilityJudge | None = None,
    citations: Mapping[str, int] | None = None,
    bank_size: int | None = None,
) -> list[Question]:
    """``n`` new questions on ``topic``, each grounded in one passage (its id is saved with it),
    none a duplicate of ``existing`` (the store's earlier questions) or of each other.
    ``judge`` adds the judge's answerability check; with ``gate.llm_check`` and no ``judge`` the
    teacher's own endpoint judges (cached and counted with the questions).
    ``citations`` (passage id -> questions already asked from it in this run) puts the least covered
    passages first, so a run of N questions covers as much of the topic as it can; ties keep a
    seeded shuffle. ``bank_size`` (default: ``len(existing)``) is how many questions the store held when
    the step began; a step asking for several topics passes the same number for each, so one topic's
    requests do not depend on whether another's were answered yet (a batch round asks for all at once).
    ``cfg.questions_per_passage`` = k gives k consecutive slots the same passage,
    each asking about another of its sentences. The drafts of all open slots are asked for at once
    (``cfg.concurrency`` calls in flight: llama-server's slots decode them together). Raises
    :class:`TeacherError` when a slot finds no acceptable question within the bound."""
    passages = kb.passages_for(topic)
    # The draws also depend on how many questions the store holds already. Without it a later run with the
    # same config (a nightly schedule) sent its predecessors' requests again, got their drafts back (the
    # cache, or a deterministic endpoint), lost one attempt per earlier run to the duplicate check and
    # called the topic "exhausted" after max_attempts_per_question runs. A rerun of a cycle still sends
    # the same requests: the cycle's start record pins the bank it reads.
    bank_size = len(existing) if bank_size is None else bank_size
    order = list(range(len(passages)))
    random.Random(stable_int(seed, cycle, topic, split, bank_size)).shuffle(order)
    if citations:
        order.sort(key=lambda i: citations.get(passages[i].id, 0))  # stable: the shuffle breaks ties
    gate = gate or cfg.gate
    judge = judge or (llm_answerability(client, endpoint) if gate.llm_check else None)
    seen = DuplicateIndex(existing, threshold=cfg.dedup_similarity)

    per_passage = cfg.questions_per_passage
    passages_read = -(-n // per_passage)

    def draft(slot: int, attempt: int) -> tuple[Passage, str | None, str]:
        # Attempt a of slot s reads passage (s//k + a*ceil(n/k)) of the order (k questions per passage):
        # the first round covers ceil(n/k) different passages, retries move on to passages no other slot
        # has read yet.
        passage = passages[order[(slot // per_passage + attempt * passages_read) % len(order)]]
        focus = None if per_passage == 1 else slot % per_passage
        try:
            reply = complete_json(
                client, endpoint, question_messages(kb.name, passage, focus), QuestionDraft,
                temperature=cfg.temperature, max_tokens=QUESTION_MAX_TOKENS,
                seed=stable_int(seed, cycle, topic, split, bank_size, slot, attempt),
            )
        except UnusableReplyError as exc:  # one bad draw (a reply cut at max_tokens): a rejected attempt, not the end
            return passage, None, f"unusable draft: {exc.reason}"  # no address: the checkpoint stays the same on reruns
        return passage, " ".join(reply.question.split()), ""

    accepted: dict[int, Question] = {}
    rejected: dict[int, list[dict[str, Any]]] = {slot: [] for slot in range(n)}
    pending = list(range(n))
    with ThreadPoolExecutor(max_workers=max(1, min(cfg.concurrency, n))) as pool:
        for attempt in range(cfg.max_attempts_per_question):
            if not pending:
                break
            # Drafts of a round are written side by side (the requests depend only on slot and attempt);
            # the checks run in slot order, so which drafts are kept does not depend on the concurrency.
            drafts = map_round(pool, lambda slot: draft(slot, attempt), pending)  # noqa: B023 - consumed here
            still_pending = []
            for slot, (passage, text, unusable) in zip(pending, drafts, strict=True):
                if text is None:
                    log.info("unusable question draft (%s)", unusable)
                    rejected[slot].append({"question": None, "passage_id": passage.id, "reason": unusable})
                    still_pending.append(slot)
                    continue
                verdict = check_question(gate, text, passage, seen, judge)
                record = {"scores": verdict.scores, **({} if verdict.judge is None else {"judge": verdict.judge})}
                if verdict.ok:
                    seen.add(text)
                    gate_record = {"decision": "kept", "attempts": attempt + 1, **record, "rejected": rejected[slot]}
                    accepted[slot] = Question(id=question_id(topic, text), topic=topic, question=text,
                                              passage_ids=[passage.id], split=split, cycle=cycle, gate=gate_record)
                    continue
                log.info("rejected question %r (%s)", text, verdict.reason)
                rejected[slot].append({"question": text, "passage_id": passage.id, "reason": verdict.reason, **record})
                still_pending.append(slot)
            pending = still_pending
    if pending:
        slot = pending[0]
        last = rejected[slot][-1]["reason"] if rejected[slot] else "none"
        raise TeacherError(
            f"topic {topic!r} looks exhausted: no new acceptable question for slot {slot + 1} of {n} after "
            f"{cfg.max_attempts_per_question} attempts (last rejection: {last}); add passages, ask for fewer "
            "questions, or raise teacher.max_attempts_per_question / teacher.dedup_similarity"
        )
    return [accepted[slot] for slot in range(n)]
