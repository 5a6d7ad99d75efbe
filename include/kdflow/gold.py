"""The gold evaluation set: questions with short gold answers and key facts, independent of any
teacher, so the student's progress is judged by something the teacher never wrote.

A gold file is JSON Lines, one item per line::

    {"id": "pods-01", "topic": "pods",
     "question": "What restart policy does a Pod get when its spec sets none?",
     "answer": "The default restartPolicy is Always.",
     "key_facts": [["Always"]],
     "passage_ids": ["pods/pods#restart-policy-and-crash-back-off-0"]}

* ``key_facts``: the facts a correct answer must state; each fact is a list of accepted surface
  forms (or one string). :func:`key_fact_recall` scores an answer by the share of facts it states,
  which needs no judge and sees a fact arrive even when the wording around it does not move.
* ``passage_ids``: the knowledge-base passages that state the answer (ids as :mod:`kdflow.kb` makes
  them); :func:`check_against_kb` refuses an item whose passages are missing or do not state one of
  its facts. ``python -m kdflow gold check`` also scores each answer's support by its passages (the
  reference gate's non-LLM score), and the tests hold the shipped set to the gate's floor.

The Kubernetes v1.28 set shipped with kdflow (``evaluation.gold_path: builtin``) was written in
the project's own words from the shipped knowledge base; a user with another knowledge base points
``evaluation.gold_path`` at their own file. A malformed line is refused before any work, with the
file, the line number and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kdflow.kb import KnowledgeBaseError
from kdflow.records import Question, stable_int

BUILTIN_GOLD = Path(__file__).parent / "data" / "gold" / "kubernetes-v1.28.jsonl"
GOLD_SPLIT = "gold"
_NON_WORD = re.compile(r"[^a-z0-9]+")
_YES_NO = re.compile(r"^(is|are|does|do|can|could|should|will|would|has|have|was|were)\b", re.IGNORECASE)


class GoldSetError(KnowledgeBaseError):
    """The gold file is missing or malformed; the message names the file, line and field. Bad
    input, like a bad knowledge base: a retry cannot help."""


def normalise_words(text: str) -> str:
    """Lowercase words separated by single spaces: punctuation and case never decide a match."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


class GoldItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.:-]+$")
    topic: str = Field(min_length=1)
    question: str = Field(min_length=10, max_length=400)
    answer: str = Field(min_length=2, max_length=600)
    key_facts: list[list[str]] = Field(min_length=1, max_length=8)
    passage_ids: list[str] = Field(min_length=1)

    @field_validator("key_facts", mode="before")
    @classmethod
    def _one_form_is_a_list(cls, value: Any) -> Any:
        return [[fact] if isinstance(fact, str) else fact for fact in value] if isinstance(value, list) else value

    @field_validator("key_facts")
    @classmethod
    def _forms_have_words(cls, value: list[list[str]]) -> list[list[str]]:
        for fact in value:
            if not fact or not all(normalise_words(form) for form in fact):
                raise ValueError("each key fact needs at least one form with a letter or digit")
        return value

    @field_validator("question")
    @classmethod
    def _open_question(cls, value: str) -> str:
        if _YES_NO.match(value.strip()):
            raise ValueError("must be an open question, not a yes/no question")
        return value

    def as_question(self) -> Question:
        """The item as a pipeline question of split ``gold`` (answered by the student, never trained on)."""
        return Question(id=f"gold-{self.id}", topic=self.topic, question=self.question,
                        passage_ids=list(self.passage_ids), split=GOLD_SPLIT)


@dataclass(frozen=True)
class GoldSet:
    path: str
    items: list[GoldItem]
    lines: dict[str, int]  # item id -> line number in the file

    def for_topics(self, topics: Iterable[str]) -> list[GoldItem]:
        wanted = set(topics)
        return [item for item in self.items if item.topic in wanted]


def resolve_gold_path(path: str | None) -> Path | None:
    if path in (None, "", "none", "off"):
        return None
    return BUILTIN_GOLD if path == "builtin" else Path(path).expanduser()


def _field_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "line"
    return f"field {where}: {first['msg']}"


def parse_gold_lines(lines: Iterable[str], source: str) -> GoldSet:
    """Validate every line of a gold file; the first bad one raises :class:`GoldSetError`."""
    items: list[GoldItem] = []
    numbers: dict[str, int] = {}
    questions: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = GoldItem.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            raise GoldSetError(f"{source}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except ValidationError as exc:
            raise GoldSetError(f"{source}:{number}: {_field_error(exc)}") from None
        if item.id in numbers:
            raise GoldSetError(f"{source}:{number}: field id: {item.id!r} already used on line {numbers[item.id]}")
        key = normalise_words(item.question)
        if key in questions:
            raise GoldSetError(f"{source}:{number}: field question: same question as line {questions[key]}")
        numbers[item.id], questions[key] = number, number
        items.append(item)
    if not items:
        raise GoldSetError(f"{source}: the gold file has no items")
    return GoldSet(path=source, items=items, lines=numbers)


def load_gold(path: str | Path) -> GoldSet:
    file = Path(path)
    if not file.is_file():
        raise GoldSetError(f"{file}: gold file not found (evaluation.gold_path)")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GoldSetError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_gold_lines(text.splitlines(), str(file))


def check_against_kb(gold: GoldSet, kb: Any, topics: Sequence[str]) -> None:
    """Every item of the selected topics cites passages that exist in ``kb`` and contain one form of
    each key fact, and at least one item exists per selected topic."""
    passages = {p.id: p for p in kb.passages}
    for item in gold.for_topics(topics):
        where = f"{gold.path}:{gold.lines[item.id]}"
        missing = [pid for pid in item.passage_ids if pid not in passages]
        if missing:
            raise GoldSetError(f"{where}: field passage_ids: no passage {missing[0]!r} in knowledge base {kb.name}")
        text = " " + " ".join(normalise_words(passages[pid].text) for pid in item.passage_ids) + " "
        for fact in item.key_facts:
            if not any(f" {normalise_words(form)} " in text for form in fact):
                raise GoldSetError(f"{where}: field key_facts: {fact!r} is not stated in the cited passages")
    empty = [t for t in topics if not any(item.topic == t for item in gold.items)]
    if empty:
        raise GoldSetError(f"{gold.path}: no gold items for topic(s) {', '.join(empty)}; add some or set "
                           "evaluation.gold_path: null")


def validated_gold(config: Any) -> GoldSet | None:  # KdflowConfig, kept import-light
    """The configured gold set, checked against the configured knowledge base and topics (None
    when ``evaluation.gold_path`` is null). Raises :class:`GoldSetError` naming file, line and field."""
    from kdflow.kb import load_from_config

    path = resolve_gold_path(config.evaluation.gold_path)
    if path is None:
        return None
    if path == BUILTIN_GOLD and config.knowledge_base.path != "builtin":
        raise GoldSetError("evaluation.gold_path: the built-in gold set is written for the built-in Kubernetes v1.28 "
                           f"knowledge base, not {config.knowledge_base.path}; point it at your own gold JSONL (format "
                           "in README) or set it to null")
    gold = load_gold(path)
    check_against_kb(gold, load_from_config(config), config.pipeline.topics)
    return gold


def stratified_sample(items: Sequence[GoldItem], per_topic: int | None, *, seed: int,
                      purpose: str) -> list[GoldItem]:
    """A seeded sample of ``per_topic`` items per topic, in file order (all when None). The same
    seed and ``purpose`` draw the same items in every run, so two runs' samples pair by question."""
    if per_topic is None:
        return list(items)
    import random

    chosen: set[str] = set()
    for topic in dict.fromkeys(item.topic for item in items):
        ids = [item.id for item in items if item.topic == topic]
        chosen.update(random.Random(stable_int(seed, purpose, topic)).sample(ids, min(per_topic, len(ids))))
    return [item for item in items if item.id in chosen]


def scored_gold(config: Any, items: Sequence[GoldItem]) -> list[GoldItem]:  # KdflowConfig, kept import-light
    """The gold items the student is answered and scored on: ``evaluation.gold_per_topic`` per topic
    (a seeded sample, e.g. in ``make run``) or all. Decontamination still protects every item."""
    return stratified_sample(items, config.evaluation.gold_per_topic, seed=config.seed, purpose="gold")


def key_fact_recall(answer: str, key_facts: Sequence[Sequence[str]]) -> float:
    """Share of ``key_facts`` stated in ``answer`` (any form of a fact, as whole words, after
    normalising case and punctuation). 0 for an empty answer."""
    text = f" {normalise_words(answer)} "
    if not key_facts:
        raise ValueError("key_fact_recall needs at least one key fact")
    found = sum(any(f" {normalise_words(form)} " in text for form in fact) for fact in key_facts)
    return found / len(key_facts)

