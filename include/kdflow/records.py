"""The rows every checkpoint holds. One schema per artifact, shared by the library, the DAG's
"Save ..." validation tasks and the report, so a checkpoint is checked the same way everywhere."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Split = Literal["train", "held_out", "gold"]
# "unread": the gold set answered by the configured student before it read the knowledge base, beside cycle 1's
# baseline (kdflow.pipeline.reading_steps), so the run measures what reading changed
Stage = Literal["baseline", "finetuned", "unread"]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


def stable_int(*parts: Any) -> int:
    """A 31-bit integer from ``parts`` that is the same in every process (``hash()`` is salted): the
    seed of every seeded choice that must repeat across runs and workers."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def question_id(topic: str, text: str) -> str:
    """Content-derived id: the same question text always gets the same id (idempotent reruns)."""
    norm = " ".join(text.lower().split())
    return f"{topic}-{hashlib.sha256(norm.encode()).hexdigest()[:10]}"


class Question(_Row):
    id: str
    topic: str
    question: str = Field(min_length=5, max_length=1000)
    passage_ids: list[str] = Field(min_length=1)
    split: Split = "train"
    cycle: int | None = None
    # Quality-gate decisions for this item (kept / regenerated / dropped, with reasons and scores).
    gate: dict[str, Any] = Field(default_factory=dict)


class Reference(_Row):
    question_id: str
    question: str
    reference: str = Field(min_length=1)
    passages: list[dict[str, str]] = Field(min_length=1)  # {"id", "text"} of the passages in context
    mode: Literal["abstractive", "extractive"] = "abstractive"
    gate: dict[str, Any] = Field(default_factory=dict)


def gate_drop_reason(reference: Reference | Mapping[str, Any]) -> str | None:
    """Why the teacher-data gate dropped this reference, or None when it may be used (a reference
    with no gate record predates the gate and is kept). Training and evaluation both ask this."""
    gate = reference.gate if isinstance(reference, Reference) else reference.get("gate") or {}
    return (gate.get("reason") or "no reason recorded") if gate.get("decision") == "dropped" else None


class Answer(_Row):
    question_id: str
    question: str
    answer: str
    stage: Stage
    split: Split = "train"
    model: str
    adapter: str | None = None
    new_tokens: int = Field(ge=0)


class ScoreRow(_Row):
    question_id: str
    topic: str
    split: Split
    stage: Stage
    cycle: int
    # metric name -> score in [0, 1], or None when the judge failed for that metric
    scores: dict[str, float | None]
    # metric name -> reason, for every metric that failed (recorded, excluded from means)
    failures: dict[str, str] = Field(default_factory=dict)


class TrainingPair(_Row):
    question_id: str
    cycle: int
    topic: str
    prompt: str
    completion: str


SCHEMAS: dict[str, type[_Row]] = {
    "questions": Question,
    "held_out": Question,
    "references": Reference,
    "answers": Answer,
    "scores": ScoreRow,
    "dataset": TrainingPair,
}
