"""The question bank: every question a store already holds, so the teacher never asks one twice.

Shared by the pipeline (each cycle's bank, the held-out set) and ``python -m kdflow teacher
questions``; it knows only the store's layout, so it imports nothing from the pipeline."""

from __future__ import annotations

import re
import sys

from kdflow.store import ArtifactStore, safe_part

_QUESTIONS_KEY = re.compile(r"^runs/([^/]+)/cycle_(\d+)/questions\.jsonl$")


def held_out_key(kb_hash: str) -> str:
    """The store-wide held-out set: fixed per knowledge-base version, never trained on."""
    return f"held_out/{kb_hash}/questions.jsonl"


def question_bank(store: ArtifactStore, kb_hash: str, *, run_id: str | None = None,
                  before_cycle: int = sys.maxsize) -> list[str]:
    """Every question of every run's cycles and of the held-out set of knowledge base ``kb_hash``.

    Cycle ``before_cycle`` and later of ``run_id`` are left out: a run's own later (or rerun)
    cycles must not count against themselves."""
    texts: list[str] = []
    own = safe_part(run_id) if run_id is not None else None
    for key in store.list_keys("runs"):
        match = _QUESTIONS_KEY.match(key)
        if not match:
            continue
        if match.group(1) == own and int(match.group(2)) >= before_cycle:
            continue
        texts.extend(row["question"] for row in store.read_jsonl(key))
    held = held_out_key(kb_hash)
    if store.exists(held):
        texts.extend(row["question"] for row in store.read_jsonl(held))
    return texts
