"""Steps before and at the start of each cycle: run record, config, knowledge base, topics."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

from kdflow.pipeline.context import RunContext
from kdflow.store import Pointer, safe_part

log = logging.getLogger(__name__)

CHAMPION_KEY = "champion/current.json"
_QUESTIONS_KEY = re.compile(r"^runs/([^/]+)/cycle_(\d+)/questions\.jsonl$")


def start_pipeline(ctx: RunContext, cycle: None, inputs: dict[str, Any]) -> dict[str, Any]:
    record = {
        "run_id": ctx.run_id,
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
        "overrides": ctx.overrides,
        "store": ctx.store.url,
    }
    return ctx.publish_json(None, "run.json", record, summary={"store": ctx.store.url}).to_xcom()


def load_configuration(ctx: RunContext, cycle: None, inputs: dict[str, Any]) -> dict[str, Any]:
    """The config was validated when the context was built; store the effective values with the run.
    The gold file is checked here too, so a malformed line stops the run before any work."""
    from kdflow.gold import validated_gold

    cfg = ctx.config
    gold = validated_gold(cfg)
    summary = {
        "topics": cfg.pipeline.topics,
        "cycles": cfg.pipeline.cycles,
        "questions_per_cycle": cfg.pipeline.questions_per_cycle,
        "teacher": cfg.teacher.model if cfg.teacher.provider == "openai" else "embedded llama.cpp",
        "student": cfg.student.model,
        "gold_items": len(gold.for_topics(cfg.pipeline.topics)) if gold else 0,
    }
    log.info("configuration: %s", summary)
    return ctx.publish_json(None, "config.json", cfg.public_dict(), summary=summary).to_xcom()


def load_knowledge_base(ctx: RunContext, cycle: None, inputs: dict[str, Any]) -> dict[str, Any]:
    from kdflow.kb import load_from_config
    from kdflow.retrieval import Retriever

    kb = load_from_config(ctx.config)
    Retriever(kb, ctx.store)  # embeds once per KB version; later tasks read the cached matrix
    topics = {t: len(kb.passages_for(t)) for t in kb.topics}
    info = {"name": kb.name, "root": kb.root, "kb_hash": kb.content_hash, "passages": topics,
            "words": sum(len(p.text.split()) for p in kb.passages)}
    log.info("knowledge base %s: %d passages, %d words, topics %s", kb.name, len(kb.passages), info["words"], topics)
    return ctx.publish_json(None, "knowledge_base.json", info, count=len(kb.passages), summary={"kb_hash": kb.content_hash}).to_xcom()


def allocate_questions(topics: list[str], per_cycle: int, cycle: int) -> dict[str, int]:
    """Spread a cycle's questions round-robin over the topics, rotating the start each cycle."""
    counts = dict.fromkeys(topics, 0)
    for i in range(per_cycle):
        counts[topics[(i + cycle - 1) % len(topics)]] += 1
    return {t: c for t, c in counts.items() if c}


def select_topics(ctx: RunContext, cycle: None, inputs: dict[str, Any]) -> dict[str, Any]:
    from kdflow.kb import load_from_config

    kb = load_from_config(ctx.config)
    topics = ctx.config.pipeline.topics
    kb.require_topics(topics)
    plan = {
        "topics": topics,
        "allocation": {
            f"cycle_{n}": allocate_questions(topics, ctx.config.pipeline.questions_per_cycle, n)
            for n in range(1, ctx.config.pipeline.cycles + 1)
        },
    }
    return ctx.publish_json(None, "topics.json", plan, summary={"topics": topics}).to_xcom()


def current_champion(ctx: RunContext) -> dict[str, Any] | None:
    """The store's champion as this run found it, if trained from the same base student model.

    A rerun of the run that was promoted sees the champion from before that promotion, so a
    rerun starts where the first try started and reproduces its checkpoints."""
    if not ctx.store.exists(CHAMPION_KEY):
        return None
    champion = ctx.store.read_json(CHAMPION_KEY)
    while champion and champion.get("run_id") == ctx.run_id:
        champion = champion.get("previous")
    if not champion:
        return None
    if champion.get("base_model") != ctx.config.student.model:
        log.info("champion %s was trained from %s, not %s: starting from the base model",
                 champion.get("run_id"), champion.get("base_model"), ctx.config.student.model)
        return None
    return champion


def question_bank(ctx: RunContext, before_cycle: int) -> list[str]:
    """Every question already asked in this store: other runs, earlier cycles of this run, held-out."""
    from kdflow.pipeline.teacher_steps import held_out_key

    texts: list[str] = []
    for key in ctx.store.list_keys("runs"):
        match = _QUESTIONS_KEY.match(key)
        if not match:
            continue
        run_part, cycle_no = match.group(1), int(match.group(2))
        if run_part == safe_part(ctx.run_id) and cycle_no >= before_cycle:
            continue  # this run's own later (or rerun) cycles must not count against themselves
        texts.extend(row["question"] for row in ctx.store.read_jsonl(key))
    held_key = held_out_key(ctx)
    if ctx.store.exists(held_key):
        texts.extend(row["question"] for row in ctx.store.read_jsonl(held_key))
    return texts


def cycle_start(ctx: RunContext, cycle: int, inputs: dict[str, Any]) -> dict[str, Any]:
    """Record which adapter and question bank the cycle starts from (or skip a cycle not asked for)."""
    if cycle > ctx.config.pipeline.cycles:
        return {"skipped": f"this run asked for {ctx.config.pipeline.cycles} cycle(s)"}
    if cycle == 1:
        champion = current_champion(ctx)
        adapter = champion["adapter"] if champion else None
        origin = f"champion from run {champion['run_id']}" if champion else "base model"
    else:
        adapter = ctx.checkpoint(cycle - 1, "adapter").to_xcom()
        origin = f"cycle {cycle - 1} adapter"
    bank = question_bank(ctx, cycle)
    record = {"cycle": cycle, "start_adapter": adapter, "origin": origin, "question_bank": bank}
    log.info("cycle %d starts from %s with %d earlier questions in the bank", cycle, origin, len(bank))
    pointer = ctx.publish_json(cycle, "start.json", record, summary={"origin": origin, "bank_size": len(bank)})
    return pointer.to_xcom()


def start_record(ctx: RunContext, cycle: int) -> dict[str, Any]:
    return ctx.store.read_json(ctx.checkpoint(cycle, "start.json"))


def start_adapter(ctx: RunContext, cycle: int) -> Pointer | None:
    adapter = start_record(ctx, cycle)["start_adapter"]
    return Pointer.of(adapter) if adapter else None
