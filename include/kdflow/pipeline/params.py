"""DAG-run params <-> config overrides. The params are the UI's trigger form; their JSON schema
refuses bad input at trigger time, and the config validation catches whatever gets past it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from kdflow.config import KdflowConfig

# param name -> (config section, config key; a dotted key is a nested one)
PARAM_FIELDS: dict[str, tuple[str, str]] = {
    "topics": ("pipeline", "topics"),
    "cycles": ("pipeline", "cycles"),
    "questions_per_cycle": ("pipeline", "questions_per_cycle"),
    "held_out_per_topic": ("pipeline", "held_out_per_topic"),
    "training_pairs": ("pipeline", "training_pairs"),
    "teacher_provider": ("teacher", "provider"),
    "teacher_model": ("teacher", "model"),
    "teacher_base_url": ("teacher", "base_url"),
    "student_model": ("student", "model"),
    "read_knowledge_base": ("student", "kb_reading.enabled"),
    "seed": (None, "seed"),
    "review_dataset": ("review", "dataset"),
    "review_promotion": ("review", "promotion"),
    "review_timeout": ("review", "timeout"),
}


def params_to_overrides(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Turn DAG-run params into a nested config override; unknown params are refused."""
    overrides: dict[str, Any] = {}
    for name, value in (params or {}).items():
        if name not in PARAM_FIELDS:
            raise ValueError(f"unknown param {name!r}; known params: {', '.join(sorted(PARAM_FIELDS))}")
        if value is None or value == "":
            continue
        section, key = PARAM_FIELDS[name]
        target = overrides if section is None else overrides.setdefault(section, {})
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return overrides


def params_schema(config: KdflowConfig, topics: list[str]) -> dict[str, dict[str, Any]]:
    """JSON-schema keyword arguments for each ``airflow.sdk.Param`` (kept Airflow-free for tests)."""
    p, t, s, r = config.pipeline, config.teacher, config.student, config.review
    return {
        "topics": dict(default=p.topics, type="array", items={"type": "string", "enum": topics}, uniqueItems=True,
                       minItems=1, examples=topics, title="Topics", description="Knowledge-base topics to distill"),
        "cycles": dict(default=p.cycles, type="integer", minimum=1, maximum=p.max_cycles, title="Cycles",
                       description=f"Distillation cycles (1 to {p.max_cycles})"),
        "questions_per_cycle": dict(default=p.questions_per_cycle, type="integer", minimum=1, maximum=50,
                                    title="Questions per cycle"),
        "held_out_per_topic": dict(default=p.held_out_per_topic, type="integer", minimum=0, maximum=20,
                                   title="Held-out questions per topic", description="0 disables the held-out set"),
        "training_pairs": dict(default=p.training_pairs, type="string", enum=["all", "new"],
                               title="Each cycle trains on",
                               description="all: every pair so far (the design); new: its own new pairs only, "
                                           "continuing from the previous adapter"),
        "teacher_provider": dict(default=t.provider, type="string", enum=["embedded", "openai"],
                                 title="Teacher provider"),
        "teacher_model": dict(default=t.model, type="string", minLength=1, title="Teacher model"),
        "teacher_base_url": dict(default=t.base_url, type=["null", "string"], title="Teacher base URL",
                                 description="OpenAI-compatible endpoint; empty for OpenAI itself"),
        "student_model": dict(default=s.model, type="string", minLength=1, title="Student model",
                              description="HF model id, local folder or GGUF file; 'embedded' = SmolLM2-135M"),
        "read_knowledge_base": dict(default=str(s.kb_reading.enabled).lower(), type="string",
                                    enum=["auto", "true", "false"], title="Student reads the knowledge base first",
                                    description="Train every weight on the topics' passages before cycle 1 (auto: "
                                                "unless the student trains in 4-bit); read once, kept in the store "
                                                "and reused by later runs (the first read of the embedded student "
                                                "takes ~14 min on 2 CPU cores)"),
        "seed": dict(default=config.seed, type="integer", minimum=0, title="Seed"),
        "review_dataset": dict(default=r.dataset, type="boolean", title="Review each cycle's training data",
                               description="Wait after Prepare Training Dataset for a person to approve, reject "
                                           "or drop pairs (Browse -> Required Actions)"),
        "review_promotion": dict(default=r.promotion, type="boolean", title="Review the promotion",
                                 description="Wait for a person to approve a new champion"),
        "review_timeout": dict(default=duration_text(r.timeout), type="string", minLength=2,
                               title="Review timeout", description="e.g. 24h, 30m, 90s; then the review takes "
                               f"its default ({r.dataset_default} the data, {r.promotion_default} the champion)"),
    }


def duration_text(value: dt.timedelta) -> str:
    """``24h``, ``30m``, ``90s``: the shortest whole unit :class:`kdflow.config.ReviewConfig` reads back."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{value.total_seconds():g}s"
