"""The data a student was trained on, as a Hugging Face dataset: Parquet files and a dataset card in
one store folder per cycle, loadable with ``datasets.load_dataset("parquet", data_files=...)`` from the
folder store and from S3/MinIO (``storage_options``), and the very files the training step reads, so
what is published is exactly what was trained on.

Files: ``train.parquet`` (the cycle's training pairs: question id, cycle, topic, prompt, completion,
the KB passages the question was drawn from), ``gold.parquet`` and ``held_out.parquet`` (the run's
evaluation sets, never trained on) and ``README.md`` (fields, gate decisions, teacher, knowledge base)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TRAIN_FILE = "train.parquet"
SPLIT_FILES = {"train": TRAIN_FILE, "gold": "gold.parquet", "held_out": "held_out.parquet"}
FIELDS = {
    "question_id": "id of the teacher's question (``passage:<id>`` for a knowledge-base passage pair)",
    "cycle": "the cycle whose teacher data the pair came from",
    "topic": "knowledge-base topic",
    "prompt": "the question, as the student is asked it",
    "completion": "the teacher's gated reference answer (or the passage text), the training target",
    "passage_ids": "knowledge-base passages the question was drawn from",
}


def write_dataset_folder(out: Path, splits: Mapping[str, Sequence[Mapping[str, Any]]], card: str) -> Path:
    """Write each non-empty split as Parquet plus the card into ``out``."""
    import datasets

    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        if rows:
            datasets.Dataset.from_list([dict(row) for row in rows]).to_parquet(str(out / SPLIT_FILES[split]))
    (out / "README.md").write_text(card)
    return out


def dataset_card(*, kb_name: str, topics: Sequence[str], teacher: str, cycle: int, pairs: int,
                 splits: Mapping[str, int], gate: Mapping[str, Any], decontaminated: int,
                 coverage: Mapping[str, Any]) -> str:
    """README.md of a cycle's dataset folder (Hugging Face card: YAML front matter + markdown)."""
    configs = "\n".join(f"  - split: {split}\n    path: {SPLIT_FILES[split]}" for split, n in splits.items() if n)
    reasons = ", ".join(f"{reason}: {count}" for reason, count in gate.get("dropped_reasons", {}).items()) or "none"
    fields = "\n".join(f"| `{name}` | {text} |" for name, text in FIELDS.items())
    return f"""---
configs:
- config_name: default
  data_files:
{configs}
task_categories: [question-answering]
tags: [kdflow, distillation]
---

# Training data of cycle {cycle}: {kb_name}

Question/answer pairs written by the teacher **{teacher}** about the knowledge base **{kb_name}**
(topics: {', '.join(topics)}), every pair of cycles 1..{cycle} that passed the quality gate, as the
student was fine-tuned on them in this cycle.

| split | rows |
|---|---|
{chr(10).join(f"| {split} | {n} |" for split, n in splits.items())}

- Gate: {gate.get('dropped', 0)} pairs dropped ({reasons}); {decontaminated} left out as too close to a gold or
  held-out question (decontamination).
- Knowledge-base coverage: {coverage.get('passages_covered')} of {coverage.get('passages')} passages cited.
- `gold` and `held_out` are the evaluation questions; they are never trained on.

## Fields of `train`

| field | meaning |
|---|---|
{fields}

Load: `datasets.load_dataset("parquet", data_files={{"train": "<folder>/{TRAIN_FILE}"}})`.
"""


def load_training_pairs(parquet: Path) -> Any:
    """The ``train`` split as a ``datasets.Dataset`` (kept in memory: a cycle's pairs are small)."""
    import datasets

    return datasets.load_dataset("parquet", data_files={"train": str(parquet)}, split="train", keep_in_memory=True)
