"""Reading the knowledge base: every weight of the student trained on the selected topics' passages as
plain text (continued pretraining), before any distillation.

Why: of every training recipe measured on the gold set (docs/benchmarks/evaluation.md), this is the one
that stores the knowledge base's facts beyond the noise without turning the answers into documentation
prose (the embedded student: key_fact_recall +0.056 [+0.026, +0.091] over two seeds, semantic similarity
unchanged). LoRA adapters on teacher pairs did not. The command ``python -m kdflow student read-kb`` and
the pipeline's ``read_knowledge_base`` step both read through :func:`read_knowledge_base`; the step keeps
the result in the store under :func:`reading_key`, so a knowledge base is read once per student and
settings, and later runs (nightly) start from it at no cost.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdflow.student.device import DevicePlan

READING_VERSION = 1  # bump when what a reading produces changes for the same inputs (the cache key includes it)


def reading_plan(cfg: Any) -> tuple[DevicePlan | None, str]:
    """The device plan a reading trains under, or None and why the student does not read.

    ``cfg`` is a :class:`kdflow.config.StudentConfig`. ``student.kb_reading.enabled``: ``false`` never
    reads; ``auto`` reads when every weight can be trained where the student trains (the plan is not
    4-bit: QLoRA on a GPU trains quantized weights only through an adapter); ``true`` always reads, a
    GPU plan then trains unquantized bf16 weights."""
    from kdflow.student.device import plan_device

    enabled = cfg.kb_reading.enabled
    if enabled is False:
        return None, "student.kb_reading.enabled is false"
    planned = cfg if enabled == "auto" else cfg.model_copy(update={"load_in_4bit": False})
    plan = plan_device(planned, "train")
    if plan.quantization is not None:
        return None, (f"the student trains in {plan.quantization} ({plan.reason}), so not every weight can be "
                      "trained: set student.kb_reading.enabled=true to read unquantized")
    return plan, "student.kb_reading.enabled is " + ("auto and every weight trains" if enabled == "auto" else "true")


def reading_key(model: str, documents: Sequence[str], cfg: Any, seed: int) -> str:
    """A short hash naming one reading: the student, the documents read and every setting that changes the
    weights it produces (``cfg`` is the StudentConfig). Two runs with the same key share one reading."""
    payload = {
        "version": READING_VERSION, "model": model, "seed": seed,
        "documents": hashlib.sha256("\x00".join(documents).encode()).hexdigest(),
        "learning_rate": cfg.kb_reading.learning_rate, "epochs": cfg.kb_reading.epochs,
        "max_length": cfg.max_length, "batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "cpu_dtype": cfg.cpu_dtype,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def read_knowledge_base(cfg: Any, model_path: Path | str, documents: Sequence[str], out_dir: Path | str, *,
                        plan: DevicePlan, seed: int) -> dict[str, Any]:
    """Train every weight of the student at ``model_path`` on ``documents`` (plain text) with
    ``student.kb_reading``'s learning rate and epochs, and save the whole model into ``out_dir``
    (:func:`kdflow.student.full_finetune.train_full`); returns its training result."""
    from kdflow.student.full_finetune import train_full

    reading = cfg.kb_reading
    settings = cfg.model_copy(update={"learning_rate": reading.learning_rate, "epochs": reading.epochs})
    return train_full(settings, model_path, documents, out_dir, plan=plan, seed=seed)


def cycles_settings(cfg: Any, read: bool) -> Any:
    """The student settings the cycles train their adapters with: ``cfg`` as it is, or, on a student that read
    the knowledge base, with ``student.kb_reading.cycles_learning_rate`` / ``cycles_epochs`` where set (why:
    a teacher's pairs trained at the usual rate can undo what was read)."""
    reading = cfg.kb_reading
    update = {key: value for key, value in (("learning_rate", reading.cycles_learning_rate),
                                            ("epochs", reading.cycles_epochs)) if value is not None}
    return cfg.model_copy(update=update) if read and update else cfg
