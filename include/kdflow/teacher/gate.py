"""Question checks before a question enters the bank: one well-formed question, not a duplicate
(normalised text, then MiniLM cosine like distilabel's EmbeddingDedup), answerable from its
passage (embedding-similarity floor between question and passage). Each verdict carries the
reason and the scores so the decision can be recorded with the item."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdflow.config import GateConfig
from kdflow.embeddings import embed, max_similarity
from kdflow.kb import Passage


class TeacherError(RuntimeError):
    """The teacher could not produce what was asked (topic exhausted, nothing usable)."""


_NON_WORD = re.compile(r"[^a-z0-9]+")
_APPENDED_ANSWER = re.compile(r"\b(answer|question|a|q)\s*:", re.IGNORECASE)
# A question must stand alone: the student never sees the passage or any options.
_NOT_STANDALONE = re.compile(r"\b(of the following|this passage|the passage|this text|the text|above)\b", re.IGNORECASE)


def normalise(text: str) -> str:
    """Lowercase words only: "What is a Pod?" and "what is a pod" are the same question."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


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


GATE_DEFAULTS = GateConfig()  # the dataclass defaults below are the config's, written once there


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class QuestionGate:
    """Bounds for a question; ``passage_floor`` is the least MiniLM cosine between question and
    source passage for the question to count as answerable from it."""

    min_words: int = GATE_DEFAULTS.min_words
    max_words: int = GATE_DEFAULTS.max_words
    passage_floor: float = GATE_DEFAULTS.passage_floor

    @classmethod
    def from_config(cls, cfg: Any) -> QuestionGate:
        gate_cfg = getattr(cfg, "gate", None)
        return cls(**gate_cfg.model_dump(include={"min_words", "max_words", "passage_floor"})) if gate_cfg else cls()

    def check(self, text: str, passage: Passage, seen: DuplicateIndex) -> Verdict:
        words = len(text.split())
        if not text.endswith("?") or text.count("?") != 1:
            return Verdict(False, "not exactly one question ending with '?'")
        if _APPENDED_ANSWER.search(text):
            return Verdict(False, "question carries an appended answer or label")
        if _NOT_STANDALONE.search(text):
            return Verdict(False, "question refers to a passage or options the student will not see")
        if not self.min_words <= words <= self.max_words:
            return Verdict(False, f"{words} words, outside {self.min_words}-{self.max_words}")
        question_vec, passage_vec = embed([text, f"{passage.section}: {passage.text}"])
        reason, dup_score = seen.duplicate_of(text, question_vec)
        scores = {"duplicate_similarity": round(dup_score, 4), "passage_similarity": round(float(question_vec @ passage_vec), 4)}
        if reason:
            return Verdict(False, reason, scores)
        if scores["passage_similarity"] < self.passage_floor:
            return Verdict(False, f"not answerable from its passage (cosine {scores['passage_similarity']:.2f} < {self.passage_floor})", scores)
        return Verdict(True, "", scores)
