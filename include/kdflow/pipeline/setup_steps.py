"""Steps before and at the start of each cycle: run record, config, knowledge base, topics."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from kdflow.bank import question_bank
from kdflow.kb import load_from_config
from kdflow.pipeline.artifacts import allocate_questions, current_champion, kb_hash
from kdflow.pipeline.context import RunContext

log = logging.getLogger(__name__)


def start_pipeline(ctx: RunContext, cycle: None) -> dict[str, Any]:
    from kdflow.tracking import git_revision

    record = {
        "run_id": ctx.run_id,
        "started_at": dt.datetime.now(dt.UTC).isoformat(),
        "overrides": ctx.overrides,
        "store": ctx.store.url,
        "git_revision": git_revision(),  # the code that ran (the tracker's mlflow.source.git.commit)
    }
    return ctx.publish_json(None, "run.json", record, summary={"store": ctx.store.url}).to_xcom()


def load_configuration(ctx: RunContext, cycle: None) -> dict[str, Any]:
    """The config was validated when the context was built; store the effective values with the run.
    The gold file is checked here too, so a malformed line stops the run before any work."""
    from kdflow.gold import validated_gold

    cfg = ctx.config
    gold = validated_gold(cfg)
    summary = ctx.mask({  # logged as well as stored: a secret pasted into a model name or URL is masked here too
        "topics": cfg.pipeline.topics,
        "cycles": cfg.pipeline.cycles,
        "questions_per_cycle": cfg.pipeline.questions_per_cycle,
        "teacher": cfg.teacher.model if cfg.teacher.provider == "openai" else "embedded llama.cpp",
        "student": cfg.student.model,
        "gold_items": len(gold.for_topics(cfg.pipeline.topics)) if gold else 0,
    })
    log.info("configuration: %s", summary)
    return ctx.publish_json(None, "config.json", cfg.public_dict(), summary=summary).to_xcom()


def load_knowledge_base(ctx: RunContext, cycle: None) -> dict[str, Any]:
    from kdflow.retrieval import Retriever

    kb = load_from_config(ctx.config)
    Retriever(kb, ctx.store)  # embeds once per KB version; later tasks read the cached matrix
    topics = {t: len(kb.passages_for(t)) for t in kb.topics}
    info = {"name": kb.name, "root": kb.root, "kb_hash": kb.content_hash, "passages": topics,
            "words": sum(len(p.text.split()) for p in kb.passages)}
    log.info("knowledge base %s: %d passages, %d words, topics %s", kb.name, len(kb.passages), info["words"], topics)
    summary = {"kb_hash": kb.content_hash}
    return ctx.publish_json(None, "knowledge_base.json", info, count=len(kb.passages), summary=summary).to_xcom()


def select_topics(ctx: RunContext, cycle: None) -> dict[str, Any]:
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


def cycle_start(ctx: RunContext, cycle: int) -> dict[str, Any]:
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
    bank = question_bank(ctx.store, kb_hash(ctx), run_id=ctx.run_id, before_cycle=cycle)
    record = {"cycle": cycle, "start_adapter": adapter, "origin": origin, "question_bank": bank}
    log.info("cycle %d starts from %s with %d earlier questions in the bank", cycle, origin, len(bank))
    pointer = ctx.publish_json(cycle, "start.json", record, summary={"origin": origin, "bank_size": len(bank)})
    return pointer.to_xcom()
