"""Question checks before a question enters the bank: one well-formed question, not a duplicate
(normalised text, then MiniLM cosine like distilabel's EmbeddingDedup), answerable from its
passage (an embedding-similarity floor between question and passage, always; and the judge's
yes/no when ``teacher.gate.llm_check`` is on, since a question can share a passage's words and
still ask for something it does not say). Each verdict carries the reason and the scores so the
decision can be recorded with the item."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from kdflow.config import GateConfig
from kdflow.embeddings import embed, max_similarity
from kdflow.gold import normalise_words
from kdflow.kb import Passage, split_sentences
from kdflow.llm.server import Endpoint
from kdflow.teacher.structured import UnusableReplyError, complete_json

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)


class TeacherError(RuntimeError):
    """The teacher could not produce what was asked (topic exhausted, nothing usable)."""


_APPENDED_ANSWER = re.compile(r"\b(answer|question|a|q)\s*:", re.IGNORECASE)
# A question must stand alone: the student never sees the passage or any options.
_NOT_STANDALONE = re.compile(r"\b(of the following|this passage|the passage|this text|the text|above)\b", re.IGNORECASE)
# A letter after end punctuation and a space, capitalised before splitting so "It removes itself. what
# does ..." splits too; "e.g." and friends stay protected by split_sentences.
_AFTER_STOP = re.compile(r"(?<=[.!?]\s)[a-z]")


def normalise(text: str) -> str:
    """Lowercase words only: "What is a Pod?" and "what is a pod" are the same question."""
    return normalise_words(text)


class DuplicateIndex:
    """Questions seen so far (earlier runs, this run, this call), by normalised text and embedding."""

    def __init__(self, texts: Iterable[str] = (), *, threshold: float):
        self.threshold = threshold
        texts = [t for t in texts if t.strip()]
        self.normalised = {normalise(t) for t in texts}
        self.matrix = embed(texts) if texts else np.zeros((0, 384), dtype=np.float32)

    def duplicate_of(self, text: str, vector: np.ndarray) -> tuple[str | None, float]:
        if normalise(text) in self.normalised:
            return "exact duplicate of an earlier question", 1.0
        similarity = max_similarity(vector, self.matrix)
        if similarity >= self.threshold:
            return f"near duplicate of an earlier question (cosine {similarity:.2f} >= {self.threshold})", similarity
        return None, similarity

    def add(self, text: str, vector: np.ndarray | None = None) -> None:
        vector = embed([text])[0] if vector is None else vector
        self.normalised.add(normalise(text))
        self.matrix = np.vstack([self.matrix, vector[None, :]])


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    judge: dict[str, Any] | None = None  # the judge's answer when it was asked: {"answerable", "reason"}


class Answerability(BaseModel):
    answerable: bool
    reason: str


# (question, passage) -> the judge's verdict, or None when its reply was unusable (it abstains).
AnswerabilityJudge = Callable[[str, Passage], Answerability | None]
JUDGE_MAX_TOKENS = 128
JUDGE_SYSTEM = "You check quiz questions. You say whether a passage contains the answer to a question."
JUDGE_USER = (
    "Passage ({section}):\n{text}\n\nQuestion: {question}\n\nCan the question be answered from this passage alone? Set "
    "answerable to true or false and give a one-sentence reason."
)


def llm_answerability(client: openai.OpenAI, endpoint: Endpoint) -> AnswerabilityJudge:
    """The judge check through ``client`` (cached and counted like any teacher call). Temperature 0:
    a yes/no verdict should not vary, and a rerun replays it from the cache."""

    def judge(question: str, passage: Passage) -> Answerability | None:
        messages = [
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user",
             "content": JUDGE_USER.format(section=passage.section, text=passage.text, question=question)},
        ]
        try:
            return complete_json(client, endpoint, messages, Answerability, temperature=0.0,
                                 max_tokens=JUDGE_MAX_TOKENS)
        except UnusableReplyError as exc:  # an endpoint down, a timeout or a refusal fails the task (Airflow retries)
            log.warning("answerability judge abstained on %r: %s", question, exc)
            return None

    return judge


def form_problem(text: str) -> str | None:
    """Why ``text`` is not one stand-alone question, or None. An answer can hide before the question
    ("It removes itself. What does the kubelet do?"), after it ("...? (It removes itself.)") or as a
    labelled part ("Answer: ..."); each shows up as a second sentence, text after the "?" or a label."""
    if not text.endswith("?") or text.count("?") != 1:
        appended = "?" in text and not text.endswith("?")
        trailing = " (text follows the '?': an appended answer or remark)" if appended else ""
        return f"not exactly one question ending with '?'{trailing}"
    if _APPENDED_ANSWER.search(text):
        return "question carries an appended answer or label"
    if len(split_sentences(_AFTER_STOP.sub(lambda m: m.group(0).upper(), text))) != 1:
        return "more than one sentence: a statement or answer comes with the question"
    if _NOT_STANDALONE.search(text):
        return "question refers to a passage or options the student will not see"
    return None


def check_question(
    gate: GateConfig, text: str, passage: Passage, seen: DuplicateIndex, judge: AnswerabilityJudge | None = None
) -> Verdict:
    """The question half of ``teacher.gate``: well formed, within ``gate.min_words``-``gate.max_words``,
    not a duplicate of ``seen``, at least ``gate.passage_floor`` MiniLM cosine to its source passage
    (answerable from it) and, with ``judge``, answerable in the judge's view (see :func:`llm_answerability`).
    Cheap checks first; ``judge`` (one LLM call) only for a question every other check kept."""
    words = len(text.split())
    problem = form_problem(text)
    if problem:
        return Verdict(False, problem)
    if not gate.min_words <= words <= gate.max_words:
        return Verdict(False, f"{words} words, outside {gate.min_words}-{gate.max_words}")
    question_vec, passage_vec = embed([text, f"{passage.section}: {passage.text}"])
    reason, dup_score = seen.duplicate_of(text, question_vec)
    scores = {"duplicate_similarity": round(dup_score, 4),
              "passage_similarity": round(float(question_vec @ passage_vec), 4)}
    if reason:
        return Verdict(False, reason, scores)
    if scores["passage_similarity"] < gate.passage_floor:
        why = f"not answerable from its passage (cosine {scores['passage_similarity']:.2f} < {gate.passage_floor})"
        return Verdict(False, why, scores)
    if judge is None:
        return Verdict(True, "", scores)
    answer = judge(text, passage)
    if answer is None:
        return Verdict(True, "", scores, {"abstained": True})
    record = answer.model_dump()
    if not answer.answerable:
        why = answer.reason.strip() or "no reason given"
        return Verdict(False, f"not answerable from its passage (judge: {why})", scores, record)
    return Verdict(True, "", scores, record)
