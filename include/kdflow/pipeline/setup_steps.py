"""Steps before and at the start of each cycle: run record, config, knowledge base, topics."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

from kdflow.pipeline.context import RunContext
from kdflow.store import Pointer, safe_part

log = logging.getLogger(__name__)

CHAMPION_PREFIX = "champion"
LEGACY_CHAMPION_KEY = "champion/current.json"  # one champion for the whole store (before issue #15): read only
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


def champion_dir(model: str) -> str:
    """``champion/<model>``: each student base model has its own champion, so a run with another
    student never replaces it. The folder name is the model name made safe, with a short hash of the
    name when that changed it (``HuggingFaceTB/SmolLM2-135M-Instruct``, a local folder), so two
    names never share a folder."""
    import hashlib

    part = safe_part(model)
    if part != model:
        part = f"{part[:180]}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"
    return f"{CHAMPION_PREFIX}/{part}"


def champion_key(model: str) -> str:
    return f"{champion_dir(model)}/current.json"


def champion_history_key(model: str, replaced: dict[str, Any]) -> str:
    """Where a replaced champion is kept: ``champion/<model>/history/<promoted_at>__<run>.json``, in
    promotion order when listed."""
    stamp = safe_part(replaced.get("promoted_at") or "undated")
    return f"{champion_dir(model)}/history/{stamp}__{safe_part(replaced.get('run_id') or 'unknown')}.json"


def stored_champion(ctx: RunContext) -> dict[str, Any] | None:
    """The champion record of this run's student model as stored (a store written before champions
    were kept per model has one ``champion/current.json``: it counts for the model it names)."""
    model = ctx.config.student.model
    if ctx.store.exists(champion_key(model)):
        return ctx.store.read_json(champion_key(model))
    if ctx.store.exists(LEGACY_CHAMPION_KEY):
        legacy = ctx.store.read_json(LEGACY_CHAMPION_KEY)
        if legacy.get("base_model") == model:
            return legacy
    return None


def current_champion(ctx: RunContext) -> dict[str, Any] | None:
    """The champion of this run's student model as this run found it.

    A rerun of the run that was promoted sees the champion from before that promotion, so a
    rerun starts where the first try started and reproduces its checkpoints."""
    champion = stored_champion(ctx)
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
